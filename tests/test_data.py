import gzip
import json
import struct

import numpy as np
import pytest

from landscape import data


def write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", n) for n in arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(head + arr.tobytes())


def test_iris_standardised_with_training_statistics():
    ds = data.load("iris", test_fraction=0.2, split_seed=3)
    assert ds.X_train.shape == (120, 4) and ds.X_test.shape == (30, 4)
    np.testing.assert_allclose(ds.X_train.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(ds.X_train.std(0), 1, atol=1e-12)
    assert abs(ds.X_test.mean()) > 1e-6  # test data use the training statistics, not their own
    assert sorted(np.bincount(ds.y_test)) == [10, 10, 10]  # stratified
    again = data.load("iris", test_fraction=0.2, split_seed=3)
    np.testing.assert_array_equal(ds.X_test, again.X_test)
    other = data.load("iris", test_fraction=0.2, split_seed=4)
    assert not np.array_equal(ds.y_test, other.y_test) or not np.array_equal(ds.X_test, other.X_test)


def test_digits_are_unit_pixels_and_zero_test_fraction_keeps_all():
    ds = data.load("digits", test_fraction=0)
    assert ds.X_train.shape == (1797, 64) and len(ds.y_test) == 0
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    assert ds.image_shape == (1, 8, 8) and ds.scaling == "unit"
    st = data.load("digits", test_fraction=0, scaling="standardize")
    np.testing.assert_allclose(st.X_train.mean(0), 0, atol=1e-12)


def test_csv_and_npz_loaders_and_hash(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = np.array(["a", "b"] * 10)
    p = tmp_path / "d.csv"
    p.write_text("f1,label,f2,f3\n" + "".join(f"{r[0]},{c},{r[1]},{r[2]}\n" for r, c in zip(X, y)))
    ds = data.load(data.DataSpec("csv", path=str(p), label_column="label", test_fraction=0, scaling="none"))
    np.testing.assert_allclose(ds.X_train, X)
    np.testing.assert_array_equal(ds.y_train, (y == "b").astype(int))
    q = tmp_path / "d.npz"
    np.savez(q, X=X, y=(y == "b").astype(int))
    dn = data.load(data.DataSpec("npz", path=str(q), test_fraction=0, scaling="none"))
    np.testing.assert_allclose(dn.X_train, X)
    assert len(ds.sha256) == 64
    np.savez(q, X=X + 1e-9, y=(y == "b").astype(int))
    assert data.load(data.DataSpec("npz", path=str(q), test_fraction=0)).sha256 != dn.sha256


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_loader(tmp_path, gz):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(12, 5, 4))
    labels = np.arange(12) % 3
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, gz)
    ds = data.load(data.DataSpec("mnist", path=str(tmp_path), test_fraction=0))
    assert ds.image_shape == (1, 5, 4)
    np.testing.assert_allclose(ds.X_train, imgs.reshape(12, -1) / 255.0)
    np.testing.assert_array_equal(ds.y_train, labels)


def test_mnist_npz_as_keras_ships_it(tmp_path):
    """Keras's mnist.npz (x_train uint8 (N, H, W), y_train; also x_test, y_test, not used): the same
    images as the IDX files give, scaled to [0, 1]; a file of the wrong shape or range is refused."""
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(12, 5, 4)).astype(np.uint8)
    labels = (np.arange(12) % 3).astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=imgs, y_train=labels, x_test=imgs[:2], y_test=labels[:2])
    ds = data.load(data.DataSpec("mnist", path=str(tmp_path / "mnist.npz"), test_fraction=0))
    write_idx(tmp_path / "train-images-idx3-ubyte", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    idx = data.load(data.DataSpec("mnist", path=str(tmp_path), test_fraction=0))
    assert ds.image_shape == (1, 5, 4) and ds.sha256 == idx.sha256
    np.testing.assert_array_equal(ds.X_train, imgs.reshape(12, -1) / 255.0)
    np.testing.assert_array_equal(ds.y_train, labels)
    for arrays, message in ((dict(x_train=imgs.reshape(12, -1), y_train=labels), r"need \(N, H, W\) and \(N,\)"),
                            (dict(x_train=imgs * 2.0, y_train=labels), r"pixel values span \[0\.0, 510\.0\]"),
                            (dict(X=imgs, y=labels), r"lacks array\(s\) \['x_train', 'y_train'\]")):
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(ValueError, match=message):
            data.load(data.DataSpec("mnist", path=str(tmp_path / "bad.npz")))


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'irs'"):
        data.DataSpec("irs")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(data.DataSpec("npz", path=str(tmp_path / "missing.npz")))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not an \.npz file \(a zip of \.npy arrays"):
        data.load(data.DataSpec("npz", path=str(bad)))
    (tmp_path / "table.csv").write_text("a,label\n1,x\n")
    with pytest.raises(ValueError, match=r"table\.csv: not an \.npz file"):
        data.load(data.DataSpec("npz", path=str(tmp_path / "table.csv")))
    nan = tmp_path / "nan.npz"
    np.savez(nan, X=np.array([[1.0, np.nan], [0.0, 1.0], [2, 2], [3, 3]]), y=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        data.load(data.DataSpec("npz", path=str(nan)))
    shape = tmp_path / "shape.npz"
    np.savez(shape, X=np.ones((4, 2)), y=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="X must be"):
        data.load(data.DataSpec("npz", path=str(shape)))
    with pytest.raises(ValueError, match="label_column"):
        data.DataSpec("csv", path="x.csv")
    for options, message in ((dict(test_fraction="x"), "test_fraction must be a number"),
                             (dict(split_seed=1.5), "split_seed must be a whole number"),
                             (dict(split_seed=-1), r"split_seed must be in \[0, 2\*\*32\)"),
                             (dict(limit="3"), "limit must be a whole number"),
                             (dict(path=3), "path must be text")):
        with pytest.raises(ValueError, match=message):
            data.DataSpec("iris", **options)
    assert data.DataSpec("npz", path=tmp_path / "a.npz").path == str(tmp_path / "a.npz")  # a path-like is kept as text
    numpy_numbers = data.DataSpec("iris", test_fraction=np.float32(0.25), split_seed=np.int64(3), limit=np.int32(50))
    assert json.loads(json.dumps(numpy_numbers.to_dict())) == dict(name="iris", path=None, label_column=None,
                                                                  scaling="auto", test_fraction=0.25, split_seed=3,
                                                                  limit=50)
    for text, message in (("a,b,label\n1,2,x\n3,4\n", "line 3 has 2 fields, the header 3"),
                          ("a,b,label\n1,2,x\n3,4,y,5\n", "line 3 has 4 fields"),
                          ("a,b,label\n", "no data rows"), ("a,b,label\n1,two,x\n", "non-numeric")):
        (tmp_path / "r.csv").write_text(text)
        with pytest.raises(ValueError, match=message):
            data.load(data.DataSpec("csv", path=str(tmp_path / "r.csv"), label_column="label"))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(ValueError, match="magic"):
        data.load(data.DataSpec("mnist", path=str(tmp_path)))


def test_source_told_from_the_path(tmp_path):
    """A path names its format: .csv, .npz (Keras's mnist.npz layout: mnist), a folder or an IDX
    file (mnist); any other name is refused in one line asking for the format."""
    np.savez(tmp_path / "plain.npz", X=np.zeros((4, 2)), y=np.arange(4) % 2)
    np.savez(tmp_path / "keras.npz", x_train=np.zeros((4, 2, 2)), y_train=np.arange(4) % 2)
    (tmp_path / "table.CSV").write_text("a,label\n1,x\n")
    for name, source in (("table.CSV", "csv"), ("plain.npz", "npz"), ("keras.npz", "mnist"), ("missing.npz", "npz"),
                         (".", "mnist"), ("train-images-idx3-ubyte.gz", "mnist"), ("t10k-labels-idx1-ubyte", "mnist")):
        assert data.source_for_path(tmp_path / name) == source, name
    for name in ("data.txt", "data", "data.json"):
        with pytest.raises(ValueError, match=r"^cannot tell the format .* give --data csv\|npz\|mnist$"):
            data.source_for_path(tmp_path / name)
    with pytest.raises(ValueError, match="data path must be text"):
        data.source_for_path(3)


def test_a_path_with_a_built_in_source_is_refused(tmp_path):
    for name in ("iris", "digits"):
        with pytest.raises(ValueError, match=f"^{name} ships with scikit-learn; drop --data-path or give --data"):
            data.DataSpec(name, path=str(tmp_path / "d.csv"))


def test_one_idx_file_as_mnist_path_names_its_folder(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="one IDX file: give the directory holding") as info:
        data.load(data.DataSpec("mnist", path=str(tmp_path / "train-images-idx3-ubyte")))
    assert str(info.value).endswith(f"(--data-path {tmp_path})")
