#!/usr/bin/env python3
"""Keras's accuracy on the seed data, measured on the same machine as tuneserve's.

    V=/work/peers-venv/bin/python
    $V bench/peers/accuracy.py features --work DIR [--ood DIR]  # Keras GAP features of the 3000 photos (+ others)
    $V bench/peers/accuracy.py compare --work DIR --bin BIN     # tuneserve's features (`embed`) vs Keras's
    $V bench/peers/accuracy.py heads --work DIR [--source keras|tuneserve] [--dropout 0.2] [--seeds 0 1 2 3 4]
                                                            # with --ood features: those photos' accuracy too
    $V bench/peers/accuracy.py stage2 --work DIR --checkpoint CKPT_DIR [--seeds 0]

Pipeline: `load_img(target_size=(150, 150), interpolation='bilinear')`,
x / 127.5 - 1, Xception notop in inference mode, GAP. Heads: [Dropout] -> Dense(1), Adam(1e-3), BCE from
logits, batch 32, 20 epochs, shuffled, `keras.utils.set_random_seed(seed)`. Accuracy is always logit > 0.
`stage2` starts from the head of a tuneserve checkpoint (so both frameworks fine-tune the same model),
unfreezes the base with BatchNorm statistics frozen (its `call` is forced to training=False: Keras 3's fit()
otherwise runs it in training mode, keras-team/keras#20285) and runs one epoch of Adam(1e-5).
`--ood DIR` names photos from another source (DIR/cat/*, DIR/dog/*): the heads are scored on them too.
Paths default to $TUNESERVE_FIXTURES (../shared).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

FX = os.environ.get("TUNESERVE_FIXTURES", "../shared")
CLASSES = ["cats", "dogs"]


def photos(work, data, split):
    root = os.path.join(work, "data")
    if not os.path.isdir(root):
        zipfile.ZipFile(data).extractall(root)
    paths, labels = [], []
    for ci, c in enumerate(CLASSES):
        p = sorted(glob.glob(f"{root}/cats_and_dogs_filtered/{split}/{c}/*.jpg"))
        paths += p
        labels += [ci] * len(p)
    if not paths:
        sys.exit(f"no photos for {split} under {root}")
    return paths, np.array(labels, dtype=np.float32)


def images(paths):
    import keras
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(150, 150), interpolation="bilinear")) for p in paths])
    return (x / 127.5 - 1.0).astype(np.float32)


def features(a):
    import keras
    base = keras.applications.Xception(weights=a.weights, include_top=False, input_shape=(150, 150, 3), pooling="avg")
    for split in ["train", "validation"]:
        paths, labels = photos(a.work, a.data, split)
        np.save(f"{a.work}/{split}_keras.npy", base.predict(images(paths), batch_size=32, verbose=0))
        np.save(f"{a.work}/{split}_labels.npy", labels)
        print(split, len(paths), "images", flush=True)
    if a.ood:
        paths = [p for c in ["cat", "dog"] for p in sorted(glob.glob(f"{a.ood}/{c}/*"))]
        labels = np.array([float("/dog/" in p) for p in paths], dtype=np.float32)
        np.save(f"{a.work}/ood_keras.npy", base.predict(images(paths), batch_size=32, verbose=0))
        np.save(f"{a.work}/ood_labels.npy", labels)
        print("other-source", len(paths), "images", flush=True)


def tuneserve_features(a, split):
    """tuneserve's features from `tuneserve embed`, cached as .npy, rows in `photos` order."""
    out = f"{a.work}/{split}_tuneserve.npy"
    if not os.path.exists(out):
        paths, _ = photos(a.work, a.data, split)
        rows = []
        for i in range(0, len(paths), 500):
            r = subprocess.run([a.bin, "embed", "--weights", a.weights] + paths[i:i + 500], check=True, capture_output=True, text=True)
            rows += [json.loads(line)["features"] for line in r.stdout.splitlines()]
        np.save(out, np.array(rows, dtype=np.float32))
    return np.load(out)


def compare(a):
    for split in ["train", "validation"]:
        k, o = np.load(f"{a.work}/{split}_keras.npy"), tuneserve_features(a, split)
        d = np.abs(k - o)
        print(f"{split}: {len(k)} images, max|diff| {d.max():.3g}, mean|diff| {d.mean():.3g}, max|keras| {np.abs(k).max():.3g}")


def heads(a):
    import keras
    feats = (lambda s: np.load(f"{a.work}/{s}_keras.npy")) if a.source == "keras" else (lambda s: tuneserve_features(a, s))
    xt, yt, xv, yv = feats("train"), np.load(f"{a.work}/train_labels.npy"), feats("validation"), np.load(f"{a.work}/validation_labels.npy")
    ood = os.path.exists(f"{a.work}/ood_keras.npy") and a.source == "keras"
    if ood:
        xo, yo = np.load(f"{a.work}/ood_keras.npy"), np.load(f"{a.work}/ood_labels.npy")
    final, best, ood_acc, ood_bal = [], [], [], []
    for seed in a.seeds:
        keras.utils.set_random_seed(seed)
        inp = keras.Input((xt.shape[1],))
        h = keras.layers.Dropout(a.dropout)(inp) if a.dropout > 0 else inp
        m = keras.Model(inp, keras.layers.Dense(1)(h))
        m.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
        accs = []
        for _ in range(20):
            m.fit(xt, yt, batch_size=32, epochs=1, shuffle=True, verbose=0)
            accs.append(float(((m.predict(xv, verbose=0)[:, 0] > 0) == yv).mean()))
        final.append(accs[-1])
        best.append(max(accs))
        line = f"{a.source} features, dropout {a.dropout}, seed {seed}: final {accs[-1]:.3f}, best epoch {max(accs):.3f}"
        if ood:
            right = (m.predict(xo, verbose=0)[:, 0] > 0) == yo
            ood_acc.append(float(right.mean()))
            ood_bal.append(float((right[yo == 0].mean() + right[yo == 1].mean()) / 2))
            line += f"; other-source photos (final model): {ood_acc[-1]:.4f}, balanced {ood_bal[-1]:.4f}"
        print(line, flush=True)
    print(f"{a.source} features, dropout {a.dropout}: mean final {np.mean(final):.4f}, mean best {np.mean(best):.4f}")
    if ood:
        print(f"other-source photos ({len(yo)}): mean {np.mean(ood_acc):.4f} ± {(max(ood_acc) - min(ood_acc)) / 2:.4f}, "
              f"balanced {np.mean(ood_bal):.4f} ± {(max(ood_bal) - min(ood_bal)) / 2:.4f}")


def stage2(a):
    import keras
    from safetensors.numpy import load_file
    head = load_file(os.path.join(a.checkpoint, "model.safetensors"))
    tp, yt = photos(a.work, a.data, "train")
    vp, yv = photos(a.work, a.data, "validation")
    xt, xv = images(tp), images(vp)
    for seed in a.seeds:
        keras.utils.set_random_seed(seed)
        base = keras.applications.Xception(weights=a.weights, include_top=False, input_shape=(150, 150, 3))
        bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bns:
            layer.call = (lambda f: lambda inputs, training=None, mask=None: f(inputs, training=False, mask=mask))(layer.call)
        inp = keras.Input((150, 150, 3))
        h = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(base(inp, training=False)))
        dense = keras.layers.Dense(1)
        m = keras.Model(inp, dense(h))
        dense.set_weights([head["head.kernel"], head["head.bias"]])
        base.trainable = True
        m.compile(keras.optimizers.Adam(1e-5), keras.losses.BinaryCrossentropy(from_logits=True))
        mean0, gamma0 = bns[5].moving_mean.numpy().copy(), bns[5].gamma.numpy().copy()
        before = float(((m.predict(xv, batch_size=32, verbose=0)[:, 0] > 0) == yv).mean())
        m.fit(xt, yt, batch_size=32, epochs=1, shuffle=True, verbose=0)
        logits = m.predict(xv, batch_size=32, verbose=0)[:, 0]
        loss = float(keras.losses.BinaryCrossentropy(from_logits=True)(yv, logits))
        print(f"seed {seed}: validation accuracy {before:.3f} before, {float(((logits > 0) == yv).mean()):.3f} after one "
              f"stage-2 epoch (loss {loss:.4f}); moving statistics unchanged: {np.array_equal(mean0, bns[5].moving_mean.numpy())}, "
              f"gamma trained: {not np.array_equal(gamma0, bns[5].gamma.numpy())}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["features", "compare", "heads", "stage2"])
    p.add_argument("--work", required=True, help="folder for the unpacked photos and cached features")
    p.add_argument("--data", default=os.path.join(FX, "datasets/cats_and_dogs_filtered.zip"))
    p.add_argument("--weights", default=os.path.join(FX, "weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    p.add_argument("--bin", default="target/release/tuneserve")
    p.add_argument("--source", default="keras", choices=["keras", "tuneserve"])
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--checkpoint", help="a tuneserve checkpoint folder (stage2)")
    p.add_argument("--ood", help="photos from another source: DIR/cat/*, DIR/dog/* (features)")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.what == "stage2" and not a.checkpoint:
        p.error("stage2 needs --checkpoint")
    {"features": features, "compare": compare, "heads": heads, "stage2": stage2}[a.what](a)


if __name__ == "__main__":
    main()
