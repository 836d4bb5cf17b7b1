"""Pages of images and PDFs: rendering, page selection, streaming, and clear errors for bad input."""
from __future__ import annotations

import gc
import io
import weakref

import pytest
from PIL import Image

from vlm.documents import DocumentError, iter_pages, parse_pages


def build_pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A minimal hand-written PDF with a correct xref table."""
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer_extra
    out += b">>\nstartxref\n%d\n%%%%EOF\n" % xref
    return out


def encrypted_pdf() -> bytes:
    """A one-page PDF protected by a user password (standard security handler, RC4 40-bit)."""
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> >>"
    return build_pdf(
        [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
         b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>", encrypt],
        b"/Encrypt 4 0 R /ID [<" + b"ab" * 16 + b"> <" + b"ab" * 16 + b">] ",
    )


def empty_pdf() -> bytes:
    """A well-formed PDF with zero pages, written by pdfium itself."""
    import pypdfium2 as pdfium

    buf = io.BytesIO()
    pdfium.PdfDocument.new().save(buf)
    return buf.getvalue()


def image_pdf(images: list[Image.Image], path, resolution: float = 200.0):
    images[0].save(path, "PDF", resolution=resolution, save_all=True, append_images=images[1:])
    return path


def test_parse_pages():
    assert parse_pages(None, 3) == [0, 1, 2]
    assert parse_pages("1-2,3", 5) == [0, 1, 2]
    assert parse_pages("2-", 4) == [1, 2, 3]
    assert parse_pages([3, 1, 3], 3) == [2, 0]
    assert parse_pages(2, 2) == [1]
    with pytest.raises(DocumentError, match="out of range.*3 page"):
        parse_pages("1-5", 3)
    with pytest.raises(DocumentError, match="bad page range"):
        parse_pages("one", 3)
    with pytest.raises(DocumentError, match="start is after end"):
        parse_pages("3-1", 3)


def test_pdf_of_receipt_renders_at_image_size(tmp_path, receipt):
    img = Image.open(receipt).convert("RGB")
    pdf = image_pdf([img], tmp_path / "receipt.pdf")
    pages = list(iter_pages(pdf))
    assert [p.number for p in pages] == [1] and pages[0].count == 1
    # saved at 200 dpi and rendered at the default 200 dpi: the page comes back at the image's size
    assert abs(pages[0].image.width - img.width) <= 1 and abs(pages[0].image.height - img.height) <= 1
    assert pages[0].image.mode == "RGB"
    # same pixels up to JPEG re-encoding inside the PDF
    diff = sum(abs(a - b) for a, b in zip(img.resize((64, 128)).tobytes(), pages[0].image.resize((64, 128)).tobytes()))
    assert diff / (64 * 128 * 3) < 8


def test_pdf_page_selection_and_bytes(tmp_path):
    colours = ["red", "green", "blue"]
    pdf = image_pdf([Image.new("RGB", (100, 80), c) for c in colours], tmp_path / "three.pdf")
    pages = list(iter_pages(pdf, "2-3"))
    assert [p.number for p in pages] == [2, 3] and all(p.count == 3 for p in pages)
    assert pages[0].image.getpixel((50, 40))[1] > 100  # green page
    from_bytes = list(iter_pages(pdf.read_bytes(), pages=[1]))
    assert from_bytes[0].image.getpixel((50, 40))[0] > 200  # red page
    with pytest.raises(DocumentError, match="page 4 is out of range"):
        list(iter_pages(pdf, "4"))


def test_long_pdf_streams_one_page_at_a_time(tmp_path):
    pdf = image_pdf([Image.new("RGB", (100, 140), (i * 5, 0, 0)) for i in range(50)], tmp_path / "long.pdf")
    alive = []
    count = 0
    for page in iter_pages(pdf, dpi=72):
        alive.append(weakref.ref(page.image))
        count += 1
        del page  # refcounting frees an unreferenced page at once
    gc.collect()
    assert count == 50
    # the generator keeps no rendered page: all but (at most) the last are gone
    assert sum(ref() is not None for ref in alive) <= 1


def test_multi_frame_tiff_is_pages(tmp_path):
    path = tmp_path / "two.tiff"
    Image.new("RGB", (60, 40), "red").save(path, save_all=True, append_images=[Image.new("RGB", (60, 40), "blue")])
    pages = list(iter_pages(path))
    assert [p.number for p in pages] == [1, 2]
    assert pages[1].image.getpixel((5, 5))[2] > 200


def test_image_page(receipt):
    (page,) = iter_pages(receipt)
    assert page.number == 1 and page.count == 1 and page.image.mode == "RGB"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(encrypted_pdf()), "encrypted"),
    (lambda p: p.write_bytes(empty_pdf()), "no pages"),
    (lambda p: p.write_bytes(b"%PDF-1.4\n% truncated garbage"), "not a readable PDF"),
    (lambda p: p.write_bytes(b""), "empty"),
])
def test_bad_pdfs_have_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.pdf"
    make(path)
    with pytest.raises(DocumentError, match=message):
        list(iter_pages(path))


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(DocumentError, match="not an image or PDF"):
        list(iter_pages(junk))
    with pytest.raises(DocumentError, match="not found"):
        list(iter_pages(tmp_path / "missing.png"))
    with pytest.raises(DocumentError, match="dpi"):
        iter_pages(junk, dpi=0)
