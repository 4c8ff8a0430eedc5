"""A model on disk (pollinate.artifacts): NumPy's .npz, written whole, read back exactly, and
a hostile file refused before anything large is allocated."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pollinate import Arrays, load_arrays, save_arrays


def model() -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays(
        {
            "fc1.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "fc1.bias": np.zeros(4, np.float16),
            "steps": np.array(7, np.int64),
            "mask": np.array([True, False]),
            "layer/0/kernel": np.asfortranarray(rng.normal(size=(2, 5))),
            "empty": np.zeros((0, 3), np.float32),
        }
    )


def test_arrays_come_back_exactly_in_their_order(tmp_path: Path) -> None:
    path = model().save(tmp_path / "model.npz")
    loaded = Arrays.load(path)
    assert loaded == model() and loaded.names == model().names
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no partial left
    assert load_arrays(save_arrays(model(), tmp_path / "same.npz")) == loaded  # as functions


def test_the_file_is_numpys_own_npz(tmp_path: Path) -> None:
    path = save_arrays(model(), tmp_path / "model.npz")
    with np.load(path) as npz:  # allow_pickle=False, numpy's default
        assert npz.files == model().names
        np.testing.assert_array_equal(npz["fc1.weight"], model()["fc1.weight"])


def test_files_numpy_wrote_are_read_compressed_or_not(tmp_path: Path) -> None:
    np.savez(tmp_path / "plain.npz", a=np.arange(3), b=np.ones((2, 2)))
    np.savez_compressed(tmp_path / "small.npz", a=np.arange(3), b=np.ones((2, 2)))
    for name in ("plain.npz", "small.npz"):
        loaded = load_arrays(tmp_path / name)
        assert loaded.names == ["a", "b"] and loaded["b"].tolist() == [[1, 1], [1, 1]]


def test_loaded_arrays_are_writable_and_native_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "big.npz", w=np.arange(4, dtype=">f4"))
    w = load_arrays(tmp_path / "big.npz")["w"]
    w[0] = 9
    assert w.dtype == np.float32 and w.dtype.isnative and w.tolist() == [9, 1, 2, 3]


def test_saving_replaces_a_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    save_arrays(model(), path)
    save_arrays(Arrays({"w": np.ones(1)}), path)
    assert load_arrays(path).names == ["w"]


def test_save_takes_arrays_and_says_how() -> None:
    with pytest.raises(TypeError, match=r"Hint: Arrays\(\{'w': w\}\).save"):
        save_arrays({"w": np.ones(1)}, "x.npz")  # type: ignore[arg-type]


# --- hostile files --------------------------------------------------------------------------


def npz_with(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "hostile.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=True)
    return out.getvalue()


def test_a_pickled_object_array_is_refused_never_unpickled(tmp_path: Path) -> None:
    path = npz_with(tmp_path, {"x.npy": npy(np.array([{"a": 1}], dtype=object))})
    with pytest.raises(ValueError, match="has dtype object"):
        load_arrays(path)


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def test_a_header_claiming_more_than_the_member_holds_is_refused_before_allocating(
    tmp_path: Path,
) -> None:
    path = npz_with(tmp_path, {"x.npy": npy_header((1 << 40,)) + bytes(16)})  # 8 TiB claimed
    with pytest.raises(ValueError, match="declares 8796093022208 bytes of data and holds 16"):
        load_arrays(path)


def test_a_shape_whose_product_overflows_int64_is_refused(tmp_path: Path) -> None:
    path = npz_with(tmp_path, {"x.npy": npy_header((1 << 32, 1 << 32)) + bytes(8)})
    with pytest.raises(ValueError, match="declares 147573952589676412928 bytes"):
        load_arrays(path)


def test_too_many_bytes_or_arrays_are_refused_from_the_directory_alone(tmp_path: Path) -> None:
    path = save_arrays(model(), tmp_path / "model.npz")
    with pytest.raises(ValueError, match=r"(?s)more than max_bytes=10.*Hint: Arrays.load"):
        load_arrays(path, max_bytes=10)
    with pytest.raises(ValueError, match="more than max_arrays=2"):
        load_arrays(path, max_arrays=2)


def test_a_file_that_is_not_a_zip_or_not_npy_members_says_how_to_write_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="(?s)not a model file.*Hint: write one"):
        load_arrays(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="does not end in .npy"):
        load_arrays(npz_with(tmp_path, {"readme.txt": b"hi"}))
    with pytest.raises(ValueError, match="x.npy"):
        load_arrays(npz_with(tmp_path, {"x.npy": b"\x93NUMPY garbage"}))


def test_a_name_with_control_characters_is_refused(tmp_path: Path) -> None:
    path = npz_with(tmp_path, {"a\x1b[31m.npy": npy(np.zeros(1))})
    with pytest.raises(ValueError, match="member"):
        load_arrays(path)
