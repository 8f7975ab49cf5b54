"""Upgrade speed and memory on a multi-GB source, side by side with ``cp -r`` of the same source.

Builds (once, reused, in a child process) a random-initialised llava-hf ``LlavaForConditionalGeneration``
with a Llama LLM of TinyLlama widths (1.19 B parameters, bfloat16, 2.2 GiB in 5 shards) and a tiny
CLIP tower, plus a tiny Qwen3-VL perceiver. Then, in one run, ``--runs`` times each and alternating:
``cp -r SOURCE`` and ``vlm-swap upgrade SOURCE --encoder perceiver:...`` (the real command line in a
CLI process that imports first and starts the command on a signal; its peak RSS comes from
``wait4``). The source is read once beforehand, so both read it from the page cache. Before every
timed command, untimed: the previous output is deleted, a copy of the source is written and deleted
(so every command starts with the same memory: 2 GB of page cache freed just now, which is when
``cp`` is fastest on this machine) and ``sync`` runs. Neither fsyncs its output (``--fsync`` adds
fsyncs of the written files to both timings). The CLI process reports how long importing vlm_swap
took and how long the command itself took; the rest of its wall time is interpreter teardown.

Records upgrade_wall_vs_copy (the upgrade command / cp -r), upgrade_process_wall_vs_copy (the
whole process / cp -r, fixed costs included) and upgrade_peak_rss_vs_checkpoint. With ``--encoder
qwen3-vl-2b`` the perceiver has Qwen3-VL-2B's widths (2.13 B parameters, random bfloat16 weights,
4.3 GB in shards, also built in the child process), ``cp -r`` copies the source and the encoder, and
the figures are upgrade_wall_vs_copy_real_encoder and upgrade_peak_rss_vs_checkpoint_real_encoder
(peak RSS / the source's bytes, as above).

    python bench/bench_upgrade.py [--work /tmp/bench-upgrade] [--runs 3] [--fsync] [--clean]
                                  [--encoder tiny|qwen3-vl-2b]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import record  # noqa: E402

SHARD_BYTES = 500 * 1024**2
ENCODER_WIDTHS = ("tiny", "qwen3-vl-2b")
TEXT = dict(  # TinyLlama-1.1B's widths with 24 layers: 1.19 B parameters
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=64,
    vocab_size=32064,
    max_position_embeddings=2048,
)


def write_random_shards(out: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Random bfloat16 tensors of ``shapes`` in safetensors shards of about ``SHARD_BYTES`` with an index, each
    shard made, written and freed before the next (the checkpoint is never whole in memory)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    shards, pending, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if pending and size + nbytes > SHARD_BYTES:
            shards.append(pending)
            pending, size = {}, 0
        pending[name] = shape
        size += nbytes
    shards.append(pending)
    n, weight_map, total = len(shards), {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tensors = {k: torch.empty(v, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen) for k, v in shard.items()}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * 2 for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_source(out: Path) -> Path:
    """A random-initialised llava-hf checkpoint: the tiny zoo model's files, TinyLlama's widths."""
    import torch
    import transformers as tf

    from vlm_swap import zoo

    if (out / ".complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    zoo.build_llava(out)  # tiny: tokenizer, processor, chat template and a CLIP tower config
    for f in out.glob("*.safetensors"):
        f.unlink()
    config = tf.AutoConfig.from_pretrained(out)
    for k, v in TEXT.items():
        setattr(config.text_config, k, v)
    config.dtype = config.text_config.dtype = "bfloat16"
    with torch.device("meta"):
        meta = tf.LlavaForConditionalGeneration(config)
    write_random_shards(out, {k: tuple(v.shape) for k, v in meta.state_dict().items()})
    config.save_pretrained(out)
    (out / ".complete").touch()
    return out


def build_perceiver(out: Path, width: str = "tiny") -> Path:
    """The tiny zoo Qwen3-VL perceiver; with ``width="qwen3-vl-2b"``, its processor and tokenizer with the
    published Qwen3-VL-2B widths (the catalog's architecture: 2.13 B parameters, 4.3 GB in bfloat16), random
    weights in shards, the tiny tokenizer's special-token ids kept."""
    import torch
    import transformers as tf

    from vlm_swap import zoo
    from vlm_swap.catalog import CATALOG

    if (out / ".complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    zoo.build_perceiver(out)
    if width != "tiny":
        for f in out.glob("*.safetensors"):
            f.unlink()
        arch = CATALOG.get(width).arch
        config = tf.AutoConfig.from_pretrained(out)
        for part in ("text_config", "vision_config"):
            for k, v in arch[part].items():
                setattr(getattr(config, part), k, v)
        config.dtype = config.text_config.dtype = config.vision_config.dtype = "bfloat16"
        with torch.device("meta"):
            meta = tf.Qwen3VLForConditionalGeneration(config)
        shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
        shapes.pop("lm_head.weight")  # tied to the input embeddings: not saved, as save_pretrained does
        write_random_shards(out, shapes)
        config.save_pretrained(out)
    (out / ".complete").touch()
    return out


def warm(path: Path) -> None:
    """Read every file once so the timed commands read from the page cache."""
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(64 * 1024**2):
                    pass


# Runs the real `vlm-swap` command line in-process. It imports vlm_swap, says READY on stderr, and starts
# the command only when a line arrives on stdin, so the bench can start it at the same moment after the
# previous output was deleted as it starts `cp`; it reports how long the command itself took.
CLI_DRIVER = """
import sys, time
t0 = time.perf_counter()
import vlm_swap.cli
print("READY", time.perf_counter() - t0, file=sys.stderr, flush=True)
sys.stdin.readline()
sys.argv = ["vlm-swap", *sys.argv[1:]]
t1 = time.perf_counter()
try:
    vlm_swap.cli.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(f"VLM_SWAP_TIMES {time.perf_counter() - t1}", file=sys.stderr)
sys.exit(code)
"""


@dataclass
class Timing:
    wall: float  # from the start to the process's exit (plus the fsyncs when asked)
    command: float  # the command alone: `cp` whole, the upgrade command inside the CLI process
    startup: float = 0.0  # the CLI process: from its spawn to READY (interpreter start and imports)
    imports: float = 0.0  # the CLI process: importing vlm_swap
    peak: int = 0  # peak RSS of the process, bytes
    written: int = 0  # bytes of safetensors written


def timed(
    cmd: list[str], out: Path, previous: Path | None, fsync: bool, prime: Path | None, driver: bool = False
) -> Timing:
    """Time ``cmd``, which writes ``out``. ``previous`` (the last command's output) is deleted and
    ``sync`` run just before the start, untimed, so that every command starts the same way: right
    after 2 GB of page cache were freed, with nothing left to write back. A ``driver`` command (the
    CLI process) is spawned and imports first; only its command is started then."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    pipes = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    startup = imports = 0.0
    if driver:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, **pipes)
        while (line := proc.stderr.readline()) and not line.startswith("READY"):
            pass
        if not line:
            proc.wait()
            raise SystemExit(f"{' '.join(cmd)} failed before its command")
        startup, imports = time.perf_counter() - t, float(line.split()[1])
    if previous is not None:
        shutil.rmtree(previous)
    if prime is not None:  # the same memory state for every command: 2 GB of page cache freed just now
        scratch = out.with_name("scratch")
        subprocess.run(["cp", "-r", str(prime), str(scratch)], check=True)
        shutil.rmtree(scratch)
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    if driver:
        proc.stdin.write("\n")
        proc.stdin.close()
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **pipes)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if fsync:
        subprocess.run(["sync", "-f", *map(str, sorted(out.rglob("*.safetensors")))], check=True)
    wall = time.perf_counter() - t0
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}:\n{err}")
    # fsyncs run after the process: count them as the command's
    command = float(err.rsplit("VLM_SWAP_TIMES", 1)[1].split()[0]) if driver and not fsync else wall
    written = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    return Timing(wall, command, startup, imports, usage.ru_maxrss * 1024, written)  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-upgrade"), help="source, perceiver and outputs")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each command (the median is kept)")
    ap.add_argument("--fsync", action="store_true", help="include fsyncs of the written files in both timings")
    ap.add_argument("--clean", action="store_true", help="delete the work directory at the end")
    ap.add_argument(
        "--encoder",
        choices=ENCODER_WIDTHS,
        default="tiny",
        help="the perceiver: tiny, or Qwen3-VL-2B's widths (4.3 GB; records the *_real_encoder figures)",
    )
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    wide = args.encoder != "tiny"
    src, perceiver = args.work / "source", args.work / ("perceiver" if not wide else f"perceiver-{args.encoder}")
    if args.build_only:
        build_source(src)
        build_perceiver(perceiver, args.encoder)
        return
    # built in a child process: a child forked from a parent that held the weights would report the
    # parent's pages in its own peak RSS
    build = [sys.executable, __file__, "--work", str(args.work), "--encoder", args.encoder, "--build-only"]
    subprocess.run(build, check=True)
    ckpt = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    enc_bytes = sum(f.stat().st_size for f in perceiver.glob("*.safetensors"))
    n_shards = len(list(src.glob("*.safetensors")))
    cp_out, up_out = args.work / "copy", args.work / "upgraded"
    cli = [sys.executable, "-c", CLI_DRIVER]
    copy_cmd = ["cp", "-r", str(src), str(cp_out)]
    if wide:  # the upgrade reads both checkpoints and writes both: the copy copies both
        copy_cmd = ["sh", "-c", 'mkdir "$2" && cp -r "$0" "$1" "$2"/', str(src), str(perceiver), str(cp_out)]
    upgrade_cmd = [*cli, "upgrade", str(src), "--encoder", f"perceiver:{perceiver}", "--out", str(up_out)]
    imports_cmd = [sys.executable, "-c", "import vlm_swap.cli, vlm_swap.surgery.pipeline"]

    warm(src)
    warm(perceiver)
    copies, upgrades, previous = [], [], None
    for out in (cp_out, up_out):
        shutil.rmtree(out, ignore_errors=True)
    for i in range(args.runs):
        # the order alternates, so neither command always runs right after the other one
        for cmd, out, driver in [(copy_cmd, cp_out, False), (upgrade_cmd, up_out, True)][:: -1 if i % 2 else 1]:
            (upgrades if driver else copies).append(timed(cmd, out, previous, args.fsync, src, driver))
            previous = out
    shutil.rmtree(previous)
    baseline = timed(imports_cmd, args.work, None, False, None).peak  # peak RSS of the imports alone

    med = statistics.median
    commands = [u.command for u in upgrades]
    processes = [u.startup + u.wall for u in upgrades]  # spawn to exit, less the wait for the start signal
    exits = [u.wall - u.command for u in upgrades]  # interpreter teardown (torch, transformers)
    walls = [c.wall for c in copies]
    peak = max(u.peak for u in upgrades)
    # ratios of the runs taken back to back, then their median: drift of a busy machine cancels out
    vs_copy = med(u / c for u, c in zip(commands, walls, strict=True))
    process_vs_copy = med(u / c for u, c in zip(processes, walls, strict=True))
    gib = 1024**3
    print(f"source: {ckpt / gib:.2f} GiB in {n_shards} shards (bfloat16); encoder {enc_bytes / gib:.2f} GiB")
    print(f"output {upgrades[-1].written / gib:.2f} GiB")
    print(f"{'':36}{'median s':>9}  runs")
    for label, times in (
        ("cp -r", walls),
        ("vlm-swap upgrade, whole process", processes),
        ("  importing vlm_swap (fixed cost)", [u.imports for u in upgrades]),
        ("  the upgrade command", commands),
        ("  interpreter teardown", exits),
    ):
        print(f"{label:36}{med(times):>9.2f}  {', '.join(f'{t:.2f}' for t in times)}")
    print(f"peak RSS of upgrade {peak / 2**20:.0f} MiB; of importing vlm_swap alone {baseline / 2**20:.0f} MiB")
    common = dict(checkpoint_bytes=ckpt, shards=n_shards, runs=args.runs, copy_s=round(med(walls), 3))
    common["writes"] = "fsynced" if args.fsync else "page cache (no fsync), source read from the page cache"
    rss = dict(peak_rss_bytes=peak, import_rss_bytes=baseline)
    if wide:
        encoder = f"{args.encoder}-shaped Qwen3-VL perceiver, random bfloat16 weights, {enc_bytes} bytes"
        common |= {"encoder": encoder, "encoder_bytes": enc_bytes, "copy": "cp -r of the source and the encoder"}
        rss |= {"peak_rss_vs_source_and_encoder": round(peak / (ckpt + enc_bytes), 3), **common}
        record("upgrade_wall_vs_copy_real_encoder", round(vs_copy, 3), upgrade_s=round(med(commands), 3), **common)
    else:
        rss["checkpoint_bytes"] = ckpt
        record(
            "upgrade_wall_vs_copy",
            round(vs_copy, 3),
            goal="<= 1.5",
            upgrade_s=round(med(commands), 3),
            import_s=round(med(u.imports for u in upgrades), 3),
            exit_s=round(med(exits), 3),
            note="the upgrade command, timed inside the CLI process (after `import vlm_swap`) from its start to its "
            "return",
            **common,
        )
        process_s = round(med(processes), 3)
        record("upgrade_process_wall_vs_copy", round(process_vs_copy, 3), process_s=process_s, **common)
    name = "upgrade_peak_rss_vs_checkpoint" + ("_real_encoder" if wide else "")
    record(name, round(peak / ckpt, 3), goal="<= 0.6", **rss)
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
