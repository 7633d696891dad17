#!/usr/bin/env python3
"""PyTorch eager Xception on one CUDA GPU: stage-2 training step and inference, img/s.

The peer for `cargo run --release --features cuda --example gpu_bench` (same
workloads: batch 32, 150x150, stage 2 = everything trains with BatchNorm in
eval mode, Adam lr 1e-5, BCE-with-logits on one logit; inference = headless
base in eval()+inference_mode).

    python bench/peers/gpu_torch.py [--workload stage2|infer|both] [--batch 32] [--size 150]
        [--iters 10] [--warmup 3] [--channels-last] [--no-tf32] [--cudnn-benchmark]

Model: timm's `legacy_xception` when timm is installed, else a built-in copy of
the same architecture (reported in "model_source"). PyTorch's defaults are
kept unless flagged: cuDNN may use TF32 for convolutions (torch default),
cudnn.benchmark off. Prints one JSON line per workload.
"""
import argparse
import json
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="both", choices=["stage2", "infer", "both"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=150)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-tf32", action="store_true", help="strict fp32 (cuDNN and cuBLAS TF32 off)")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def builtin_xception(num_classes, global_pool):
    """timm legacy_xception's architecture (Keras Xception with torch padding)."""
    import torch.nn as nn

    class SeparableConv2d(nn.Module):
        def __init__(self, cin, cout, k=3, stride=1, padding=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cin, k, stride, padding, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.conv1(x))

    class Block(nn.Module):
        def __init__(self, cin, cout, reps, strides=1, start_with_relu=True, grow_first=True):
            super().__init__()
            if cout != cin or strides != 1:
                self.skip = nn.Conv2d(cin, cout, 1, stride=strides, bias=False)
                self.skipbn = nn.BatchNorm2d(cout)
            else:
                self.skip = None
            rep = []
            for i in range(reps):
                if grow_first:
                    inc, outc = (cin if i == 0 else cout), cout
                else:
                    inc, outc = cin, (cin if i < reps - 1 else cout)
                rep += [nn.ReLU(inplace=True), SeparableConv2d(inc, outc), nn.BatchNorm2d(outc)]
            if not start_with_relu:
                rep = rep[1:]
            else:
                rep[0] = nn.ReLU(inplace=False)
            if strides != 1:
                rep.append(nn.MaxPool2d(3, strides, 1))
            self.rep = nn.Sequential(*rep)

        def forward(self, x):
            skip = self.skipbn(self.skip(x)) if self.skip is not None else x
            return self.rep(x) + skip

    class Xception(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
            self.bn1 = nn.BatchNorm2d(32)
            self.act1 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
            self.bn2 = nn.BatchNorm2d(64)
            self.act2 = nn.ReLU(inplace=True)
            blocks = [Block(64, 128, 2, 2, start_with_relu=False), Block(128, 256, 2, 2), Block(256, 728, 2, 2)]
            blocks += [Block(728, 728, 3, 1) for _ in range(8)]
            blocks += [Block(728, 1024, 2, 2, grow_first=False)]
            self.blocks = nn.Sequential(*blocks)
            self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
            self.bn3 = nn.BatchNorm2d(1536)
            self.act3 = nn.ReLU(inplace=True)
            self.conv4 = SeparableConv2d(1536, 2048, 3, 1, 1)
            self.bn4 = nn.BatchNorm2d(2048)
            self.act4 = nn.ReLU(inplace=True)
            self.num_features = 2048
            self.fc = nn.Linear(2048, num_classes) if num_classes else None

        def forward(self, x):
            x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
            x = self.blocks(x)
            x = self.act3(self.bn3(self.conv3(x)))
            x = self.act4(self.bn4(self.conv4(x)))
            if global_pool == "avg":
                x = x.mean(dim=(2, 3))
            if self.fc is not None:
                x = self.fc(x)
            return x

    return Xception()


def create(num_classes, global_pool):
    try:
        import timm

        return timm.create_model("legacy_xception", pretrained=False, num_classes=num_classes, global_pool=global_pool), f"timm {timm.__version__} legacy_xception"
    except Exception as e:  # noqa: BLE001 - timm missing or too old: use the built-in copy
        print(f"timm unavailable ({e}); using the built-in legacy_xception copy", file=sys.stderr)
        return builtin_xception(num_classes, global_pool), "builtin legacy_xception copy"


def timed(step, iters, warmup, torch):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    a = parse_args(argv)
    import torch

    torch.manual_seed(a.seed)
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    dev = torch.device(a.device)
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    x = (torch.rand(a.batch, 3, a.size, a.size, device=dev) * 2 - 1).contiguous(memory_format=mf)
    y = torch.randint(0, 2, (a.batch, 1), device=dev).float()
    common = {
        "engine": "pytorch-eager",
        "torch_version": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev),
        "batch": a.batch,
        "size": a.size,
        "channels_last": a.channels_last,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": a.cudnn_benchmark,
    }

    def report(workload, times, extra):
        s = sorted(times)
        med = s[len(s) // 2]
        out = dict(common, workload=workload, iters=len(s), median_ms=round(med * 1e3, 2),
                   mean_ms=round(sum(s) / len(s) * 1e3, 2), img_per_s=round(a.batch / med, 1), **extra)
        print(json.dumps(out), flush=True)

    if a.workload in ("infer", "both"):
        model, src = create(0, "")
        model = model.to(dev).eval().to(memory_format=mf)

        def step():
            with torch.inference_mode():
                return model(x)

        report("infer", timed(step, a.iters, a.warmup, torch), {"model_source": src, "call": "eval()+inference_mode"})
        del model
        torch.cuda.empty_cache()

    if a.workload in ("stage2", "both"):
        model, src = create(1, "avg")
        model = model.to(dev).to(memory_format=mf)
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()  # inference-mode BN; gamma/beta still train
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def step():
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        report("stage2", timed(step, a.iters, a.warmup, torch), {"model_source": src, "call": "eager forward/backward/Adam.step"})


if __name__ == "__main__":
    main()
