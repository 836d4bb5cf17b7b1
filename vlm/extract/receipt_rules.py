"""Hand-written rules for the receipt fields (company, date, address, total): the SROIE rules baseline
(``vlm.eval.baselines.rules``) and the receipt template's evidence (``prompts.Template.reader``).

The rules were written by reading receipts of the SROIE *train* split and checked on a vendor-disjoint
slice of it; they use nothing but the OCR text (and its boxes, to rebuild visual rows):

- rows: OCR lines whose boxes overlap vertically by more than half are one row, read left to right;
- date: the first date-shaped token (dd/mm/yyyy, dd-mm-yy, yyyy-mm-dd, dd MMM yyyy, ...) on a row that
  says DATE, else the first valid date-shaped token anywhere;
- total: amounts (``12.30``, ``RM 1,007.50``) on rows with a total keyword, best keyword first
  (rounded/nett/grand total, total incl. tax, amount due > plain TOTAL; the later row wins a tie), the
  amount on that row or the next two, ignoring a GST/tax summary table once a total was found; without
  any keyword, the largest amount not on a cash/change/tender row. A currency sign printed against the
  number (``RM8.20``, ``$9.20``) is kept, one printed apart (``RM 8.20``) is not, as in the SROIE keys;
- company: the first rows (among the top 10) that end in a company word (SDN BHD, ENTERPRISE,
  TRADING, RESTORAN, ...), joined with the rows it continues from; else the first all-caps text row that
  is not a document heading (TAX INVOICE, RECEIPT, ...). Registration numbers in brackets are dropped;
- address: the rows after the company, skipping registration-number rows, up to a row with a phone,
  fax, GST, e-mail, invoice or date marker, joined with spaces.

Company and address come out upper-cased (SROIE keys are upper case).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .layout import ocr_rows, strip_registration  # rows and registration numbers, shared with line choices


def normalise_whitespace(text: str | None) -> str:
    return " ".join(str(text).split()) if text else ""


# --- date ---------------------------------------------------------------------------------------
_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|SEPT|OCT|NOV|DEC"
# A scan often runs the date straight into the time ("19-03-201818:08:38", "2018-01-0522:55:25"): a date's last
# part may be followed by a time's digits and colon instead of a non-digit (seen on 15 of the 21 SROIE train
# receipts where the rules found no date).
_GLUED_TIME = r"(?=\d{1,2}:\d\d)"
_DATE_PATTERNS = [
    re.compile(rf"(?<![\d])(\d{{1,2}})([/\-.])(\d{{1,2}})\2(\d{{4}}{_GLUED_TIME}|\d{{4}}(?![\d])|\d{{2}}(?![\d]))"),
    re.compile(rf"(?<![\d])(\d{{4}})([/\-.])(\d{{1,2}})\2(\d{{2}}{_GLUED_TIME}|\d{{1,2}}(?![\d]))"),
    re.compile(rf"(?<![\dA-Z])(\d{{1,2}})([ \-]?)({_MONTHS})[A-Z]*\2,?\s?(\d{{4}}|\d{{2}})(?![\d])", re.I),
    re.compile(rf"(?<![A-Z])({_MONTHS})[A-Z]*\s(\d{{1,2}}),\s?(\d{{4}})(?![\d])", re.I),
]


def _valid_date(match: re.Match, pattern_index: int) -> bool:
    g = match.groups()
    try:
        if pattern_index == 0:
            a, b = int(g[0]), int(g[2])
            return 1 <= a <= 31 and 1 <= b <= 12 or 1 <= b <= 31 and 1 <= a <= 12
        if pattern_index == 1:
            return 1990 <= int(g[0]) <= 2099 and 1 <= int(g[2]) <= 12 and 1 <= int(g[3]) <= 31
        if pattern_index == 2:
            return 1 <= int(g[0]) <= 31
        return 1 <= int(g[1]) <= 31
    except ValueError:
        return False


def find_dates(text: str) -> list[str]:
    found = []
    for idx, pattern in enumerate(_DATE_PATTERNS):
        for m in pattern.finditer(text):
            if _valid_date(m, idx):
                found.append((m.start(), m.group(0)))
    return [s for _, s in sorted(found)]


def extract_date(rows: Sequence[str]) -> str | None:
    first = None
    for i, row in enumerate(rows):
        dates = find_dates(row)
        if not dates:
            continue
        labelled = re.search(r"\bDATE\b|\bTARIKH\b", row, re.I) or (i > 0 and re.search(r"\bDATE\b\W*$", rows[i - 1], re.I))
        if labelled:
            return dates[0].upper()
        if first is None:
            first = dates[0].upper()
    return first


# --- total --------------------------------------------------------------------------------------
_AMOUNT = re.compile(r"(?<![\d.,])((?:RM|\$)?\s?)(-?\d{1,3}(?:,\d{3})+\.\d{2}|-?\d+\.\d{2})(?![\d])", re.I)
# (pattern, priority): higher wins. Checked on the upper-cased row.
_TOTAL_KEYS = [
    (re.compile(r"ROUND(ED|ING)?\s*(D\s*)?TOTAL|TOTAL\s*(\(?ROUND|AFTER\s+ROUND)|NETT?\s*TOTAL|TOTAL\s*NETT?\b"), 6),
    (re.compile(r"TOTAL\s*PAYABLE"), 6),
    (re.compile(r"GRAND\s*TOTAL|AMOUNT\s*(DUE|PAYABLE)|TOTAL\s*DUE|NET\s*AMOUNT"), 5),
    (re.compile(r"TOTAL.{0,20}([IL1]NCL|INC\.|W/\s*GST|WITH\s*GST)|[IL1]NCL.{0,12}GST"), 5),
    (re.compile(r"TOTAL\s*(AMOUNT|AMT|SALES?|RM|\(RM\)|:|$)"), 3),
    (re.compile(r"(?<!SUB)(?<!SUB\s)TOTAL"), 2),
    (re.compile(r"\bAMOUNT\b|\bJUMLAH\b"), 1),
]
_NOT_TOTAL = re.compile(
    r"SUB\s*-?\s*TOTAL|TOTAL\s*(QTY|QUANTITY|ITEM|GST|TAX|DISC|SAVING|EXCL|EXCLUDING|NO\.? OF|POINTS?|PCS|UNITS?)"
    r"|(TAX|GST)\s*TOTAL|EXCL(UDING|\.)?\s*(OF\s*)?GST|GST\s*SUMMARY|TOTAL\s*\(EXCL|ROUNDING\s*ADJ|\bCHANGE\b|\bCASH\b|TENDER|QTY"
)
_PAYMENT = re.compile(r"\bCASH\b|\bCHANGE\b|TENDER|\bPAID\b|VISA|MASTER|CARD|BALANCE|BAKI")


def _amounts(row: str) -> list[str]:
    """Amounts on a row; an RM/$ prefix written against the number (``RM9.00``) is kept, one set apart by any
    whitespace (``RM 9.00``, ``RM\t9.00``) is not."""
    return [m.group(1).upper() + m.group(2) if m.group(1) and not m.group(1)[-1].isspace() else m.group(2)
            for m in _AMOUNT.finditer(row)]


def _value(amount: str) -> float:
    return float(re.sub(r"[^\d.\-]", "", amount))


def labelled_total(rows: Sequence[str]) -> str | None:
    """The amount on (or just under) the row with the strongest total label (``TOTAL``, ``GRAND TOTAL``, ...),
    or None when no row is labelled as a total."""
    best: tuple[int, int, str] | None = None  # (priority, row index, amount)
    for i, row in enumerate(rows):
        up = row.upper()
        if best is not None and re.search(r"(GST|TAX)\s*SUMMARY", up):
            break  # the tax table below repeats totals before rounding
        if _NOT_TOTAL.search(up):
            continue
        priority = next((p for pat, p in _TOTAL_KEYS if pat.search(up)), 0)
        if not priority:
            continue
        amounts = [a for a in _amounts(row) if _value(a) > 0]
        if not amounts:  # the value sits on one of the next rows
            for nxt in rows[i + 1:i + 3]:
                if _PAYMENT.search(nxt.upper()) or re.search(r"[A-Z]{3,}", nxt.upper().replace("RM", "")):
                    break
                amounts = [a for a in _amounts(nxt) if _value(a) > 0]
                if amounts:
                    break
        if not amounts:
            continue
        cand = (priority, i, amounts[-1])
        if best is None or priority >= best[0]:
            best = cand
    if best is None:
        return None
    return _rounded(rows, best[1], best[2]) or best[2]


def _rounded(rows: Sequence[str], index: int, amount: str) -> str | None:
    """The same total rounded to 5 sen, printed on a row below the total's (``Total Incl. GST 49.39`` then
    ``Total RM 49.40`` or ``Rounding RM 49.40``): Malaysian receipts round cash totals so, and the rounded sum
    is what was paid (12 of the rules' 59 wrong totals on the SROIE train receipts were the unrounded one)."""
    value = _value(amount)
    target = round(round(value * 20) / 20, 2)
    if abs(target - value) < 1e-9:
        return None
    for row in rows[index + 1:]:
        if re.search(r"(GST|TAX)\s*SUMMARY", row.upper()):
            break
        for a in _amounts(row):
            if abs(_value(a) - target) < 1e-9:
                return a
    return None


def extract_total(rows: Sequence[str]) -> str | None:
    """:func:`labelled_total`, else the largest amount not on a payment row (cash, change, card)."""
    labelled = labelled_total(rows)
    if labelled is not None:
        return labelled
    pool = [a for row in rows if not _PAYMENT.search(row.upper()) for a in _amounts(row) if _value(a) > 0]
    return max(pool, key=_value) if pool else None


# --- company and address ------------------------------------------------------------------------
_COMPANY_END = re.compile(
    r"(SDN\.?\s*BHD\.?|\bBHD\.?|\bS/B|\bBERHAD|ENTERPRISES?|TRADING|\bSTORES?|\bMART\b|MARKET|\bCO\b\.?"
    r"|RESTAURANT|RESTORAN|\bKEDAI|HARDWARE|PHARMACY|BAKERY|BAKERIES|\bCAFE|\bSTATIONERY|\bSUPERMARKET"
    r"|\bHOLDINGS?|\bCORPORATION|\bLIMITED|\bLTD\.?|\bPLT|\bMAKANAN|\bPERNIAGAAN|\bTRADERS?)",
    re.I,
)
_HEADING = re.compile(
    r"^\W*(SIMPLIFIED\s*)?(FULL\s*)?(TAX\s*)?(INVOICE|RECEIPT|BILL|CASH\s*BILL|OFFICIAL\s*RECEIPT|COPY|WELCOME.*)\W*$",
    re.I,
)
_REG_ROW = re.compile(
    r"^\W*((CO[\.\-\s]*)?(REG|ROC|BRN?|COMPANY)\b.*|\(?[A-Z]{0,3}\s*\d[\d\s]{5,}\s*(-?\s*[A-Z])?\)?|\(?\d{6,}[\-\s]?[A-Z]?\)?)\W*$",
    re.I,
)
_ADDRESS_STOP = re.compile(
    r"\bTEL\b|TEL\s*:|PHONE|\bH/?P\b|\bFAX\b|GST|E-?MAIL|@|WWW\.|HTTP|INVOICE|RECEIPT|\bDATE\b|CASHIER|\bDOC\b"
    r"|\bBILL\b|\bSST\b|TAX\b|\bNO\.?\s*:\s*\d|\(?\d{2,3}\)?[\s-]*\d{3,4}[\s-]?\d{4}\b\s*,?\s*$|\bOPEN\b|\bTABLE\b",
    re.I,
)
_ALPHA = re.compile(r"[A-Za-z]")
_REG_LABEL = re.compile(r"\bREG|\bGST\s*(ID|NO)|\bROC\b|\bBRN?\b|COMPANY\s*NO", re.I)


def _is_texty(row: str) -> bool:
    letters = len(_ALPHA.findall(row))
    return letters >= 3 and letters >= 0.5 * len(row.replace(" ", ""))


def _company_span(rows: Sequence[str], top: int = 10) -> tuple[int, int] | None:
    """Rows [start, end] that name the company, or None."""
    for i, row in enumerate(rows[:top]):
        if _COMPANY_END.search(row) and not _HEADING.match(row) and not _ADDRESS_STOP.search(row):
            start = i
            # a name broken over rows: the previous row when it ends mid-name ("... SDN", "... (", "... &")
            # or when this row starts with the company word ("ENTERPRISE (SETIA" after "AIK HUAT HARDWARE")
            while (start > 0 and i - start < 2 and _is_texty(rows[start - 1]) and not _HEADING.match(rows[start - 1])
                   and not _ADDRESS_STOP.search(rows[start - 1])
                   and (re.search(r"(SDN|\(|&|AND)\s*$", rows[start - 1].upper())
                        or (start == i and _COMPANY_END.match(row.lstrip())))):
                start -= 1
            end = i
            # ...or continued on the next row ("... HARDWARE" / "ENTERPRISE (SETIA" / "ALAM) SDN BHD")
            while end + 1 < len(rows) and end - i < 2 and re.search(r"\(\s*[A-Z][A-Z\s]*$|&\s*$", rows[end].upper()):
                end += 1
            if end == i and not re.search(r"\bBHD\b|S/B", row.upper()):
                for j in range(i + 1, min(i + 3, len(rows))):
                    if re.search(r"\d", rows[j]):
                        break
                    if re.search(r"\bBHD\b|S/B", rows[j].upper()):
                        end = j
                        break
            return start, end
    for i, row in enumerate(rows[:top]):
        if _is_texty(row) and not _HEADING.match(row) and not _ADDRESS_STOP.search(row) and row.upper() == row:
            return i, i
    return None


# OCR misreads of the Malaysian company suffixes, seen on SROIE train receipts: "5/B" for "S/B", "SON BHD" for
# "SDN BHD" (the 0/O and 5/S confusions of a small recogniser).
_SUFFIX_FIXES = [(re.compile(r"(?<=\s)5/B\b"), "S/B"), (re.compile(r"\bS[O0]N(\.?\s*BHD)"), r"SDN\1")]


def _clean_company(text: str) -> str:
    text = strip_registration(text).upper()
    for pattern, fixed in _SUFFIX_FIXES:
        text = pattern.sub(fixed, text)
    return text or None


def extract_company_address(rows: Sequence[str]) -> tuple[str | None, str | None]:
    span = _company_span(rows)
    if span is None:
        return None, None
    start, end = span
    company = _clean_company(" ".join(rows[start:end + 1]))
    parts: list[str] = []
    postcode_seen = False
    for row in rows[end + 1:end + 8]:
        if _REG_ROW.match(row) or (find_dates(row) and len(re.sub(r"[\d\s:/\-.APM]", "", row.upper())) <= 4):
            if parts:
                break
            continue
        if _ADDRESS_STOP.search(row):
            if not parts and _REG_LABEL.search(row):
                continue  # "GST REG NO: ..." / "CO. REG. NO.: ..." between the name and the address
            break
        if _COMPANY_END.search(row) and re.search(r"SDN|BHD", row, re.I) and not parts:
            continue  # a second company name (e.g. the operator of a franchise)
        if postcode_seen and (re.search(r"\d", row) or len(row.split()) > 3):
            break  # after the postcode row only a state/country row may follow
        parts.append(row)
        if re.search(r"(?<!\d)\d{5}(?!\d)", row):
            postcode_seen = True
    address = normalise_whitespace(" ".join(parts)).upper() or None
    return company, address


def extract_fields(lines: Sequence[Any]) -> dict[str, str | None]:
    """All four fields from OCR lines (see :func:`ocr_rows` for what a line may be)."""
    rows = ocr_rows(lines)
    company, address = extract_company_address(rows)
    return {"company": company, "date": extract_date(rows), "address": address, "total": extract_total(rows)}


_POSTCODE = re.compile(r"(?<!\d)\d{5}(?!\d)")


def evidence(lines: Sequence[Any]) -> dict[str, str | None]:
    """The rules' values where they are reliable, as the receipt template's reader (``Template.reader``):
    :func:`extract_fields`, except an address without a five-digit postcode, which is left to the model
    (on the SROIE train split such addresses were right 5 times in 80, those with a postcode 168 in 325)."""
    found = extract_fields(lines)
    if found["address"] and not _POSTCODE.search(found["address"]):
        found["address"] = None
    return found


def reads_as_receipt(lines: Sequence[Any]) -> bool:
    """Whether the page reads as a transaction document: the rules find a date or a labelled total on it
    (403 of 405 SROIE train receipts; a sign, a menu or a page of prose has neither)."""
    rows = ocr_rows(lines)
    return extract_date(rows) is not None or labelled_total(rows) is not None
