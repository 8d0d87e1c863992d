"""Keras 3 (TensorFlow backend) side of bench/peers.py: runs inside bench/.venv-keras.

    bench/.venv-keras/bin/python bench/peers_keras.py '{"model": "mnist_cnn", ...}'

Builds the notes' models exactly as deepstart's ``mnist_cnn`` and ``keras_cifar_cnn`` (same
layers, same parameter counts), trains them on random uint8 images scaled to [0, 1] float32
(as the Keras examples do), and prints one JSON line: images/s of the timed ``fit`` and the
parameter count. It never imports deepstart (TensorFlow is not a deepstart dependency).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build(name: str, shape: tuple[int, int, int], classes: int = 10):
    import keras
    from keras import layers

    c, h, w = shape
    inputs = keras.Input((h, w, c))  # Keras is NHWC
    if name == "mnist_cnn":
        x = layers.Conv2D(32, 3, activation="relu")(inputs)
        x = layers.Conv2D(64, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    elif name == "keras_cifar_cnn":  # the Keras example's widths (32, 64), hidden 512
        x = inputs
        for width in (32, 64):
            x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
            x = layers.Conv2D(width, 3, activation="relu")(x)
            x = layers.MaxPooling2D(2)(x)
            x = layers.Dropout(0.25)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    else:
        raise SystemExit(f"unknown model {name}")
    # logits (float32 under mixed precision, as Keras's guide advises); the loss applies the
    # softmax
    outputs = layers.Dense(classes, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def main() -> None:
    args = json.loads(sys.argv[1])
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    keras.utils.set_random_seed(0)
    if args.get("kind") == "keras+bf16":  # bf16 compute, float32 weights; logits kept float32
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    c, h, w = args["shape"]
    batch, n = args["batch"], args["images"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8).astype("float32") / 255.0
    y = rng.integers(0, 10, n)
    model = build(args["model"], (c, h, w))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    warm = args["warmup"] * batch
    model.fit(x[:warm], y[:warm], batch_size=batch, epochs=1, verbose=0)  # trace + warm-up
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    out = {
        "images_per_s": n / seconds,
        "params": int(model.count_params()),
        "versions": f"keras {keras.__version__}, tensorflow {tf.__version__}",
        "dtype": "bf16" if args.get("kind") == "keras+bf16" else "fp32",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
