"""Image decoding: every mode PIL reads becomes the RGB uint8 array the App shows; bad files fail clearly."""

import numpy as np
import pytest
from PIL import Image

from sam3_ops.core.images import ImageLoadError, load_image


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_modes_become_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    array = load_image(path)
    assert array.shape == (30, 40, 3) and array.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(array, expected)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    array = load_image(path)
    assert array.shape == (2, 2, 3)
    np.testing.assert_array_equal(array[:, :, 0], [[0, 100], [255, 200]])


def test_exif_rotation_is_applied(tmp_path):
    # 40 wide x 20 high, stored with orientation 6 (rotate 90 clockwise to display): shown 20 x 40
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.shape == (40, 20, 3)
    assert shown[:15].mean() > 200 and shown[-15:].mean() < 50  # the white half is now on top


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), color) for color in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    array = load_image(path)
    assert array.shape == (6, 8, 3) and array[0, 0, 0] > 200 and array[0, 0, 2] < 50


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"this is not an image at all"), "cannot decode"),
    ],
)
def test_bad_files(tmp_path, setup, message):
    path = tmp_path / "bad.jpg"
    setup(path)
    with pytest.raises(ImageLoadError, match=message):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(truncated)


def test_size_guard_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(path, max_pixels=300 * 200 - 1)
    assert load_image(path, max_pixels=300 * 200).shape == (200, 300, 3)
