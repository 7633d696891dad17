#!/usr/bin/env python3
"""Peer benchmarks: Keras (TensorFlow) and PyTorch on the same machine as tuneserve.

Prints exactly one JSON line on stdout; everything else (framework chatter) goes to stderr.

    python bench/peers/peers.py --framework keras|torch --workload infer|latency|stage1|stage2 \
        [--model xception|mobilenetv2] [--size 150] [--batch 32] [--iters N] [--warmup N] \
        [--threads 2] [--channels-last] [--compile] [--flush-denormal] [--weights PATH]

Workloads (random inputs in [-1, 1], random 0/1 labels; see README.md):
  infer    forward pass of the headless base in inference mode, batch --batch
  latency  the same with batch 1; reports latency_ms
  stage1   base frozen and called in inference mode, GAP -> Dense(1) trains, Adam 1e-3,
           BCE from logits, no feature cache (the base runs every step)
  stage2   everything trains, BatchNorm kept in inference mode, Adam 1e-5, BCE from logits
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

DEFAULT_ITERS = {"infer": 10, "latency": 30, "stage1": 8, "stage2": 6}
DEFAULT_WARMUP = {"infer": 3, "latency": 5, "stage1": 3, "stage2": 2}
LR = {"stage1": 1e-3, "stage2": 1e-5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", required=True, choices=["keras", "torch"])
    p.add_argument("--workload", required=True, choices=["infer", "latency", "stage1", "stage2"])
    p.add_argument("--model", default="xception", choices=["xception", "mobilenetv2"])
    p.add_argument("--size", type=int, default=150, help="input height = width (default 150)")
    p.add_argument("--batch", type=int, default=32, help="batch size (ignored by latency, which uses 1)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default per workload: %s)" % DEFAULT_ITERS)
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up iterations (default: %s)" % DEFAULT_WARMUP)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (TF inter_op is 1; torch interop 1)")
    p.add_argument("--channels-last", action="store_true", help="torch only: NHWC memory format for model and input")
    p.add_argument("--compile", action="store_true",
                   help="torch only: torch.compile (inductor), with freezing for the inference-only parts "
                        "(what a speed-minded PyTorch user runs); the first call compiles, in the warm-up")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch only: torch.set_flush_denormal(True) (TF flushes denormals in its own threads)")
    p.add_argument("--weights", default=None,
                   help="keras only: path to an .h5 weights file for the base (default: random init, weights=None)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.framework == "keras" and a.channels_last:
        p.error("--channels-last applies to torch only (Keras/TF is NHWC already)")
    if a.framework == "keras" and a.compile:
        p.error("--compile applies to torch only (Keras compiles its train/predict steps itself)")
    if a.framework == "keras" and a.flush_denormal:
        p.error("--flush-denormal applies to torch only")
    if a.framework == "torch" and a.weights:
        p.error("--weights applies to keras only (torch uses random weights; speed does not depend on them)")
    if a.workload == "latency":
        a.batch = 1
    if a.iters is None:
        a.iters = DEFAULT_ITERS[a.workload]
    if a.warmup is None:
        a.warmup = DEFAULT_WARMUP[a.workload]
    if a.iters < 1 or a.warmup < 0 or a.batch < 1 or a.size < 32 or a.threads < 1:
        p.error("need iters >= 1, warmup >= 0, batch >= 1, size >= 32, threads >= 1")
    return a


def set_thread_env(threads):
    # Must happen before TF / torch (and their OpenMP / oneDNN runtimes) are imported.
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[k] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU peers only, even on a GPU box


def time_steps(step, iters, warmup, extra=None):
    for i in range(warmup):
        t0 = time.perf_counter()
        step()
        if i == 0 and extra is not None:
            extra["first_call_s"] = round(time.perf_counter() - t0, 3)  # includes compiling
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- Keras

def run_keras(a):
    import numpy as np
    import tensorflow as tf

    # Threading config must be set before the first op executes.
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")
    import keras

    keras.utils.set_random_seed(a.seed)
    shape = (a.size, a.size, 3)
    weights = a.weights if a.weights else None
    if a.model == "xception":
        base = keras.applications.Xception(weights=weights, include_top=False, input_shape=shape)
    else:
        base = keras.applications.MobileNetV2(weights=weights, include_top=False, input_shape=shape)

    rng = np.random.default_rng(a.seed)
    x = tf.constant(rng.uniform(-1.0, 1.0, size=(a.batch,) + shape).astype("float32"))
    y = tf.constant(rng.integers(0, 2, size=(a.batch, 1)).astype("float32"))
    extra = {
        "keras_version": keras.__version__,
        "tf_version": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on)"),
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }

    if a.workload in ("infer", "latency"):
        # predict_on_batch runs the model's compiled (tf.function) predict step in inference mode,
        # which is what Keras's predict()/feature extraction does per batch.
        step = lambda: base.predict_on_batch(x)
        extra["call"] = "predict_on_batch"
        extra["output_shape"] = list(np.shape(step()))
        times = time_steps(step, a.iters, a.warmup)
        return times, extra

    bn_layers = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]

    class InferenceModeBase(keras.layers.Layer):
        """Calls the wrapped base with training=False, whatever fit()/train_on_batch pass.

        This is the fix for the Keras 3 trap: in Keras 3 a functional `base(x, training=False)`
        is overridden by fit(), so after unfreezing BatchNorm would run in training mode.
        An explicit training=False inside call() wins over the propagated call context.
        Gamma/beta stay trainable (like Keras 2's guide); moving statistics stay frozen.
        """

        def __init__(self, inner, **kw):
            super().__init__(**kw)
            self.inner = inner

        def call(self, inputs):
            return self.inner(inputs, training=False)

    if a.workload == "stage1":
        base.trainable = False
    else:
        base.trainable = True

    inputs = keras.Input(shape=shape)
    feats = InferenceModeBase(base, name="base_inference_mode")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    logits = keras.layers.Dense(1)(pooled)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(LR[a.workload]),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    extra["lr"] = LR[a.workload]
    extra["trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    extra["jit_compile"] = bool(getattr(model, "jit_compile", False))
    extra["call"] = "train_on_batch"

    probe = bn_layers[0] if bn_layers else None
    mm0 = np.array(probe.moving_mean) if probe is not None else None
    g0 = np.array(probe.gamma) if probe is not None else None

    step = lambda: model.train_on_batch(x, y)
    times = time_steps(step, a.iters, a.warmup)

    if probe is not None:
        extra["bn_moving_stats_frozen"] = bool(np.array_equal(mm0, np.array(probe.moving_mean)))
        extra["bn_gamma_changed"] = bool(not np.array_equal(g0, np.array(probe.gamma)))
    return times, extra


# --------------------------------------------------------------------------- PyTorch

def run_torch(a):
    import torch

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if a.flush_denormal:
        torch.set_flush_denormal(True)
    import timm

    torch.manual_seed(a.seed)
    name = {"xception": "legacy_xception", "mobilenetv2": "mobilenetv2_100"}[a.model]
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    if a.compile:
        import torch._inductor.config as inductor_config

        # Freezing folds the frozen weights (BatchNorm into the convs) as constants;
        # it applies to graphs run without gradients: inference and stage 1's base.
        inductor_config.freezing = a.workload in ("infer", "latency", "stage1")
    compiled = (lambda m: torch.compile(m)) if a.compile else (lambda m: m)
    extra = {
        "compile": ("torch.compile+freezing" if a.workload in ("infer", "latency", "stage1") else "torch.compile") if a.compile else "eager",
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "timm_model": name,
        "channels_last": a.channels_last,
        "flush_denormal": a.flush_denormal,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }
    x = (torch.rand(a.batch, 3, a.size, a.size) * 2 - 1).contiguous(memory_format=mf)
    y = torch.randint(0, 2, (a.batch, 1)).float()

    if a.workload in ("infer", "latency"):
        # Headless base, no pooling: same output as Keras include_top=False.
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        model = compiled(model.eval().to(memory_format=mf))

        def step():
            with torch.no_grad():
                return model(x)

        extra["call"] = "eval()+no_grad"
        times = time_steps(step, a.iters, a.warmup, extra)
        extra["output_shape"] = list(step().shape)
        return times, extra

    loss_fn = torch.nn.BCEWithLogitsLoss()
    if a.workload == "stage1":
        base = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        base = base.eval().to(memory_format=mf)  # inference mode: BN uses moving stats
        for p in base.parameters():
            p.requires_grad_(False)
        base = compiled(base)
        head = torch.nn.Linear(base.num_features, 1)
        opt = torch.optim.Adam(head.parameters(), lr=LR["stage1"])

        def step():
            with torch.no_grad():  # frozen base: no graph kept, like TF's tape with no trainable vars upstream
                f = base(x).mean(dim=(2, 3))  # GAP
            loss = loss_fn(head(f), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        extra["trainable_params"] = sum(p.numel() for p in head.parameters())
        probe = None
    else:
        # Same shape as the Keras model: base -> GAP -> Linear(num_features, 1).
        model = timm.create_model(name, pretrained=False, num_classes=1, global_pool="avg")
        model = model.to(memory_format=mf)
        model.train()
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.eval()  # BN in inference mode; its affine weights still train
        opt = torch.optim.Adam(model.parameters(), lr=LR["stage2"])
        forward = compiled(model)

        def step():
            loss = loss_fn(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        extra["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        probe = bns[0] if bns else None

    extra["lr"] = LR[a.workload]
    extra["call"] = ("compiled" if a.compile else "eager") + " forward/backward, eager Adam.step"
    if probe is not None:
        rm0 = probe.running_mean.clone()
        g0 = probe.weight.detach().clone()
    times = time_steps(step, a.iters, a.warmup, extra)
    if probe is not None:
        extra["bn_moving_stats_frozen"] = bool(torch.equal(rm0, probe.running_mean))
        extra["bn_gamma_changed"] = bool(not torch.equal(g0, probe.weight.detach()))
    return times, extra


# --------------------------------------------------------------------------- main

def main(argv=None):
    a = parse_args(argv)
    set_thread_env(a.threads)

    # Keep stdout clean for the single JSON line: route fd 1 to stderr while frameworks run.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        t_start = time.perf_counter()
        runner = run_keras if a.framework == "keras" else run_torch
        times, extra = runner(a)
        total_s = time.perf_counter() - t_start
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)

    import psutil

    med = statistics.median(times)
    out = {
        "framework": a.framework,
        "model": a.model,
        "workload": a.workload,
        "batch": a.batch,
        "size": a.size,
        "threads": a.threads,
        "img_per_s": round(a.batch / med, 3),
        "median_s": round(med, 6),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    if a.workload == "latency":
        out["latency_ms"] = round(med * 1000.0, 3)
    out.update({
        "iters": a.iters,
        "warmup": a.warmup,
        "min_s": round(min(times), 6),
        "mean_s": round(statistics.fmean(times), 6),
        "times_s": [round(t, 6) for t in times],
        "rss_end_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
        "weights": a.weights or "random",
        "total_wall_s": round(total_s, 2),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    })
    out.update(extra)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
