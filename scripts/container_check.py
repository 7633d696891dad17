#!/usr/bin/env python3
"""Helpers for scripts/check-containers.sh (no Docker needed).

  container_check.py context SRC_DIR DEST_DIR
      Copies the build context Docker would send (files of SRC_DIR minus
      .dockerignore) into DEST_DIR, keeping mtimes; fails on large files.
  container_check.py runtime-env [STAGE]
      Prints, as shell assignments, what the runtime stage sets up: ENV,
      ENTRYPOINT, CMD, HEALTHCHECK, the files it COPYs from the context.
  container_check.py dockerfile
      Structural rules for the Dockerfile (stages, user, volume, ...).
  container_check.py compose RESOLVED_YAML
      Rules for the resolved compose file (`docker-compose config` output).

Paths are relative to the repository root (the current directory).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

MAX_FILE = 5 << 20  # a larger file in the build context is a mistake
MAX_TOTAL = 50 << 20


def fail(msg):
    print(f"  FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


# ------------------------------------------------------------ Dockerfile


def parse_dockerfile(path="Dockerfile"):
    """Returns [(stage_name, base, [(INSTR, args_str)])], global ARGs dict."""
    lines = open(path, encoding="utf-8").read().splitlines()
    logical, buf = [], ""
    for line in lines:
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue  # comment inside a continuation
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        logical.append(buf + s)
        buf = ""
    if buf:
        logical.append(buf)
    stages, global_args = [], {}
    for entry in logical:
        instr, _, rest = entry.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
            if not m:
                fail(f"cannot parse FROM {rest!r}")
            stages.append((m.group(2) or str(len(stages)), m.group(1), []))
        elif not stages:
            if instr == "ARG":
                k, _, v = rest.partition("=")
                global_args[k] = v
        else:
            stages[-1][2].append((instr, rest))
    return stages, global_args


def stage(stages, name):
    for s in stages:
        if s[0] == name:
            return s
    fail(f"Dockerfile has no stage {name!r}")


def env_pairs(args):
    """ENV k=v k2="v 2" (the legacy `ENV k v` form too)."""
    toks = shlex.split(args)
    if toks and "=" not in toks[0]:
        return [(toks[0], " ".join(toks[1:]))]
    return [tuple(t.split("=", 1)) for t in toks]


def exec_form(args, what):
    try:
        v = json.loads(args)
    except ValueError:
        fail(f"{what} must use the JSON (exec) form, got {args!r}")
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        fail(f"{what} must be a JSON list of strings")
    return v


def runtime_info(stages, name):
    _, base, instrs = stage(stages, name)
    info = {"base": base, "env": {}, "copies": [], "entrypoint": None, "cmd": None,
            "healthcheck": None, "user": None, "volumes": [], "expose": [], "workdir": None}
    for instr, args in instrs:
        if instr == "ENV":
            info["env"].update(env_pairs(args))
        elif instr == "COPY":
            toks = shlex.split(args)
            flags = [t for t in toks if t.startswith("--")]
            paths = [t for t in toks if not t.startswith("--")]
            src = dict(f[2:].split("=", 1) for f in flags if "=" in f).get("from")
            info["copies"].append({"from": src, "src": paths[:-1], "dest": paths[-1],
                                   "chmod": dict(f[2:].split("=", 1) for f in flags if "=" in f).get("chmod")})
        elif instr == "ENTRYPOINT":
            info["entrypoint"] = exec_form(args, "ENTRYPOINT")
        elif instr == "CMD":
            info["cmd"] = exec_form(args, "CMD")
        elif instr == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
            if not m:
                fail("HEALTHCHECK must use CMD [\"...\"] (exec form)")
            info["healthcheck"] = {"cmd": exec_form(m.group(1), "HEALTHCHECK CMD"), "options": args[: m.start()].split()}
        elif instr == "USER":
            info["user"] = args
        elif instr == "VOLUME":
            info["volumes"] += json.loads(args) if args.startswith("[") else args.split()
        elif instr == "EXPOSE":
            info["expose"] += args.split()
        elif instr == "WORKDIR":
            info["workdir"] = args
    return info


def cmd_dockerfile():
    stages, _ = parse_dockerfile()
    names = [s[0] for s in stages]
    if names[-1] != "runtime":
        fail(f"the last stage (the default target) must be 'runtime', got {names[-1]!r}")
    for builder in ("builder", "builder-cuda"):
        instrs = stage(stages, builder)[2]
        runs = [a for i, a in instrs if i == "RUN"]
        copies = [a for i, a in instrs if i == "COPY" and not a.startswith("--from")]
        if not copies or copies[0].split()[:2] != ["Cargo.toml", "Cargo.lock"]:
            fail(f"{builder}: the first COPY must be Cargo.toml Cargo.lock (dependency layer)")
        dep_run = next((r for r in runs if "cargo build" in r), "")
        if "--release" not in dep_run or "--locked" not in dep_run:
            fail(f"{builder}: the dependency layer must run cargo build --release --locked")
        if runs[-1].strip() != "docker/build.sh /out":
            fail(f"{builder}: the last RUN must be `docker/build.sh /out` (what the CI check runs)")
    cuda_base = stage(stages, "builder-cuda")[1]
    if "nvidia/cuda" not in cuda_base or "devel" not in cuda_base:
        fail("builder-cuda must build on an nvidia/cuda devel image")
    infos = {n: runtime_info(stages, n) for n in ("runtime", "runtime-cuda")}
    if "nvidia/cuda" not in infos["runtime-cuda"]["base"] or "runtime" not in infos["runtime-cuda"]["base"]:
        fail("runtime-cuda must run on an nvidia/cuda runtime image")
    if "slim" not in infos["runtime"]["base"]:
        fail("runtime must be a slim image")
    for n, i in infos.items():
        if not i["user"] or i["user"].split(":")[0] in ("0", "root"):
            fail(f"{n}: USER must be a non-root uid")
        if "/data" not in i["volumes"]:
            fail(f"{n}: VOLUME /data is missing")
        if not i["expose"]:
            fail(f"{n}: EXPOSE is missing")
        if not i["healthcheck"] or not i["entrypoint"]:
            fail(f"{n}: HEALTHCHECK and ENTRYPOINT are required")
        port = i["env"].get("TUNESERVE_BIND", "").rsplit(":", 1)[-1]
        if port not in [e.split("/")[0] for e in i["expose"]]:
            fail(f"{n}: TUNESERVE_BIND's port {port!r} is not EXPOSEd")
        if i["env"].get("TUNESERVE_DATA_DIR") not in i["volumes"]:
            fail(f"{n}: TUNESERVE_DATA_DIR is not the volume")
    a, b = infos["runtime"], infos["runtime-cuda"]
    for k in ("entrypoint", "cmd", "healthcheck", "user", "volumes", "expose", "workdir"):
        if a[k] != b[k]:
            fail(f"runtime and runtime-cuda differ in {k}: {a[k]} vs {b[k]}")
    print(f"  Dockerfile: stages {', '.join(names)}; default target runtime; both runtimes agree")


def cmd_runtime_env(name="runtime"):
    stages, _ = parse_dockerfile()
    i = runtime_info(stages, name)
    out = []
    for k, v in i["env"].items():
        out.append(f"image_env[{shlex.quote(k)}]={shlex.quote(v)}")
    for c in i["copies"]:
        if c["from"]:
            out.append(f"image_build_copy+=({shlex.quote(c['src'][0])} {shlex.quote(c['dest'])})")
        else:
            for s in c["src"]:
                out.append(f"image_copy+=({shlex.quote(s)} {shlex.quote(c['dest'])})")
    out.append("image_entrypoint=(" + " ".join(map(shlex.quote, i["entrypoint"])) + ")")
    out.append("image_cmd=(" + " ".join(map(shlex.quote, i["cmd"] or [])) + ")")
    out.append("image_healthcheck=(" + " ".join(map(shlex.quote, i["healthcheck"]["cmd"])) + ")")
    out.append("image_volumes=(" + " ".join(map(shlex.quote, i["volumes"])) + ")")
    out.append(f"image_workdir={shlex.quote(i['workdir'] or '/')}")
    print("\n".join(out))


# ------------------------------------------------------------ build context


def ignore_regex(pattern):
    """A .dockerignore pattern as a regex (moby/patternmatcher semantics)."""
    pattern = os.path.normpath(pattern.strip().lstrip("/"))
    out, i, n = "^", 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                    out += "(.*/)?"
                else:
                    out += ".*"
            else:
                out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out += re.escape(c)
            else:
                out += pattern[i : j + 1].replace("[!", "[^")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


def load_dockerignore(path=".dockerignore"):
    rules = []
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            neg = s.startswith("!")
            rules.append((neg, ignore_regex(s[1:] if neg else s)))
    return rules


def excluded(rel, rules):
    parts = rel.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    result = False
    for neg, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not neg
    return result


def source_files(src):
    try:
        out = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (subprocess.CalledProcessError, FileNotFoundError):
        files = []
        for root, dirs, names in os.walk(src):
            dirs[:] = [d for d in dirs if d != ".git"]
            files += [os.path.relpath(os.path.join(root, n), src) for n in names]
    return sorted(f for f in files if os.path.isfile(os.path.join(src, f)))


def cmd_context(src, dest):
    rules = load_dockerignore()  # the checkout's .dockerignore, whatever SRC is
    files = [(src, rel) for rel in source_files(src)]
    if os.path.realpath(src) != os.path.realpath("."):
        # Sources from another checkout; the container files from this one.
        files = [(s, r) for s, r in files if not r.startswith("docker/")]
        files += [(".", r) for r in source_files(".") if r.startswith("docker/")]
    kept, total, big = [], 0, []
    for base, rel in files:
        if excluded(rel, rules):
            continue
        size = os.path.getsize(os.path.join(base, rel))
        total += size
        if size > MAX_FILE:
            big.append(f"{rel} ({size >> 20} MiB)")
        kept.append((base, rel))
    if big:
        fail("large files would be sent to the Docker build (add them to .dockerignore): " + ", ".join(big))
    if total > MAX_TOTAL:
        fail(f"the build context is {total >> 20} MiB (limit {MAX_TOTAL >> 20} MiB)")
    for base, rel in kept:
        d = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copy2(os.path.join(base, rel), d)
    # What the image build needs must be in the context.
    for must in ("Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs", "docker/entrypoint.sh",
                 "docker/healthcheck.sh", "docker/build.sh"):
        if not os.path.isfile(os.path.join(dest, must)):
            fail(f"{must} is not in the build context (.dockerignore excludes it?)")
    print(f"  build context: {len(kept)} files, {total / 1024:.0f} KiB (largest file limit {MAX_FILE >> 20} MiB)")


# ------------------------------------------------------------ compose


def cmd_compose(resolved):
    import yaml

    doc = yaml.safe_load(open(resolved, encoding="utf-8"))
    services = doc.get("services") or {}
    volumes = doc.get("volumes") or {}
    stages, _ = parse_dockerfile()
    stage_names = {s[0] for s in stages}
    rt = runtime_info(stages, "runtime")
    port = rt["env"]["TUNESERVE_BIND"].rsplit(":", 1)[-1]
    problems = []

    for name in ("postgres", "minio", "tuneserve", "worker"):
        if name not in services:
            problems.append(f"service {name!r} is missing")
    for name, svc in services.items():
        hc = dict(svc.get("healthcheck") or {})
        if hc.get("disable") or (hc.get("test") or [None])[0] == "NONE":
            hc = {"disable": True}  # `disable: true` resolves to test: [NONE]
        for dep, spec in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
                continue
            cond = (spec or {}).get("condition")
            if cond not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: depends_on {dep} needs condition service_healthy (got {cond})")
            dep_hc = services[dep].get("healthcheck") or {}
            dep_test = dep_hc.get("test") or ["NONE"]
            if cond == "service_healthy" and (dep_test[0] == "NONE" or dep_hc.get("disable")):
                problems.append(f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
        long_running = (svc.get("restart") or "no") != "no"
        if long_running and not hc.get("test") and not hc.get("disable"):
            problems.append(f"{name}: no healthcheck")
        for v in svc.get("volumes") or []:
            src = v.get("source") if isinstance(v, dict) else v.split(":", 1)[0]
            typ = v.get("type") if isinstance(v, dict) else ("volume" if not src.startswith((".", "/", "~")) else "bind")
            if typ != "volume" or src not in volumes:
                problems.append(f"{name}: {src} is not a named volume declared under volumes:")
        build = svc.get("build")
        if build:
            target = build.get("target") if isinstance(build, dict) else None
            if target not in stage_names:
                problems.append(f"{name}: build target {target!r} is not a Dockerfile stage")
        if name.startswith(("tuneserve", "worker")):
            env = svc.get("environment") or {}
            if not str(env.get("DATABASE_URL", "")).startswith("postgres://"):
                problems.append(f"{name}: DATABASE_URL must be postgres://")
            if not str(env.get("TUNESERVE_ARTIFACTS", "")).startswith("s3://"):
                problems.append(f"{name}: TUNESERVE_ARTIFACTS must be s3://bucket/prefix")
            if "/data" not in [v.get("target") if isinstance(v, dict) else v.split(":")[1] for v in svc.get("volumes") or []]:
                problems.append(f"{name}: /data is not on a named volume")
            for p in svc.get("ports") or []:
                target = str(p.get("target") if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0])
                if target != port:
                    problems.append(f"{name}: publishes container port {target}, the image listens on {port}")
            if hc.get("test") and list(hc["test"][1:]) != rt["healthcheck"]["cmd"]:
                problems.append(f"{name}: healthcheck {hc['test']} differs from the image's {rt['healthcheck']['cmd']}")
            cmd = svc.get("command")
            if name.startswith("worker") and (not cmd or cmd[0] != "worker"):
                problems.append(f"{name}: command must be `worker`")
    gpu = [n for n, s in services.items() if "gpu" in (s.get("profiles") or [])]
    if not gpu:
        problems.append("no service in the 'gpu' profile")
    for n in gpu:
        devs = (((services[n].get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devs):
            problems.append(f"{n}: gpu profile service does not reserve an NVIDIA device")
        if (services[n].get("build") or {}).get("target") != "runtime-cuda":
            problems.append(f"{n}: gpu profile service must build target runtime-cuda")
    if problems:
        fail("docker-compose.yml:\n    " + "\n    ".join(problems))
    print(f"  compose rules: {len(services)} services ({', '.join(services)}), "
          f"{len(volumes)} named volumes, gpu profile: {', '.join(gpu)}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"context": cmd_context, "runtime-env": cmd_runtime_env, "dockerfile": cmd_dockerfile,
     "compose": cmd_compose}[cmd](*args)
