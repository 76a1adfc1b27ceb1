"""Compile the synth kernels for a GPU without a GPU: the Triton frontend, LLVM, PTX and ptxas all run on the host.

A kernel that traces under `TRITON_INTERPRET=1` can still fail to compile for a real GPU (a libdevice call with the
wrong dtype, an op the NVIDIA backend cannot lower) or compile into register spills. This module catches both on
a CPU-only machine, with the `ptxas` and `cuobjdump` that ship in the triton wheel:

    python -m doppel_torch.backends.triton.aot                      # every synth, sm_90 (H100/H200), both phase dtypes
    python -m doppel_torch.backends.triton.aot --arch 80 --synth voice --json
    python -m doppel_torch.backends.triton.aot --grad               # also the backward kernels

It needs the compiled code path, so it refuses to run under TRITON_INTERPRET=1 (the kernels choose their
device math at import time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_TYPES = {torch.float32: "fp32", torch.float64: "fp64"}


def _signature(fn, types: dict[str, str], constexprs: dict):
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    unknown = set(constexprs) - set(names)
    if unknown:
        raise ValueError(f"{fn.__name__} has no parameters {sorted(unknown)}")
    signature = {name: "constexpr" if name in constexprs else types[name] for name in names}
    return ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack and local memory per thread and shared memory per block, as `cuobjdump -res-usage` reads
    them from the cubin (an empty dict where cuobjdump is missing)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    return {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def compile_synth(program, arch: int = 90, phase_dtype: torch.dtype = torch.float64,
                  out_dtype: torch.dtype = torch.float32, has_noise: bool = False, normalize: bool = True,
                  grad: bool = False) -> list[dict]:
    """Compile both kernels of `render(program, ...)` for `sm_<arch>` (grad: the two backward kernels instead, in
    float64 as the backward runs); one row per kernel with its resource usage.
    Raises whatever Triton raises when a kernel does not compile."""
    import triton
    from triton.backends.compiler import GPUTarget

    from doppel_torch.backends.triton import _math
    from doppel_torch.backends.triton import grad as g
    from doppel_torch.backends.triton import synth as k

    if _math.INTERPRET:
        raise RuntimeError("aot compiles the GPU code path; unset TRITON_INTERPRET and start a fresh process")
    phase, out = _TYPES[phase_dtype], _TYPES[out_dtype]
    noise = k.NOISE_NONE if not program.rows("noise") else (k.NOISE_GIVEN if has_noise else k.NOISE_KEYED)
    launch = k.launch_config(program, phase_dtype, noise=noise, normalize=normalize)
    types = {
        "control": dict(h_ptr=f"*{phase}", stride_hb="i32", kb_ptr="*i32", env_ptr="*i32", lfo_ptr="*i32",
                        in_ptr="*i32", mat_ptr="*i32", consts_ptr=f"*{phase}", ctrl_ptr=f"*{phase}", stride_cb="i32",
                        stride_co="i32"),
        "audio": dict(h_ptr=f"*{phase}", stride_hb="i32", ctrl_ptr=f"*{phase}", stride_cb="i32", stride_co="i32",
                      kb_ptr="*i32", osc_ptr="*i32", flt_ptr="*i32", noise_tab_ptr="*i32", mix_ptr="*i32",
                      consts_ptr=f"*{phase}", keys_ptr="*i64", noise_ptr=f"*{out}" if has_noise else "*i64",
                      stride_nb="i32", scratch_ptr=f"*{phase}", stride_sb="i32", out_ptr=f"*{out}", stride_ob="i32",
                      mix_filter="i32"),
    }
    kernels = {"control": k._control_kernel, "audio": k._audio_kernel}
    if grad:
        phase = out = "fp64"
        launch = g.grad_launch_config(program, noise)
        for part in launch.values():
            part.setdefault("num_warps", 4)
        types = {
            "control_grad": dict(h_ptr="*fp64", stride_hb="i32", kb_ptr="*i32", env_ptr="*i32", lfo_ptr="*i32",
                                 in_ptr="*i32", mat_ptr="*i32", consts_ptr="*fp64", gmods_ptr="*fp64",
                                 stride_gb="i32", stride_go="i32", scratch_ptr="*fp64", stride_sb="i32",
                                 gh_ptr="*fp64", stride_ghb="i32"),
            "audio_grad": dict(h_ptr="*fp64", stride_hb="i32", ctrl_ptr="*fp64", stride_cb="i32", stride_co="i32",
                               kb_ptr="*i32", osc_ptr="*i32", flt_ptr="*i32", noise_tab_ptr="*i32", mix_ptr="*i32",
                               consts_ptr="*fp64", keys_ptr="*i64", noise_ptr="*fp64" if has_noise else "*i64",
                               stride_nb="i32", scratch_ptr="*fp64", gscratch_ptr="*fp64", stride_sb="i32",
                               ckpt_ptr="*fp64", stride_kb="i32", grad_ptr="*fp64", stride_gb="i32",
                               gctrl_ptr="*fp64", stride_gcb="i32", stride_gco="i32", gh_ptr="*fp64",
                               stride_ghb="i32", gnoise_ptr="*fp64", stride_gnb="i32", mix_filter="i32"),
        }
        kernels = {"control_grad": g._control_grad_kernel, "audio_grad": g._audio_grad_kernel}
    rows = []
    for part, kernel in kernels.items():
        constexprs = dict(launch[part])
        options = {"num_warps": constexprs.pop("num_warps", 4)}
        start = time.perf_counter()
        compiled = triton.compile(_signature(kernel, types[part], constexprs), target=GPUTarget("cuda", arch, 32),
                                  options=options)
        rows.append({
            "synth": program.patch.name, "kernel": part, "arch": f"sm_{arch}", "triton": triton.__version__,
            "phase_dtype": phase, "out_dtype": out, "has_noise": has_noise, "num_warps": options["num_warps"],
            **{key: v for key, v in constexprs.items() if key.startswith("BLOCK")},
            # compile_s is ~0 when Triton's cache (~/.triton/cache) already held the kernel
            "compile_s": round(time.perf_counter() - start, 2), "cubin_bytes": len(compiled.asm["cubin"]),
            **resource_usage(compiled.asm["cubin"]),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    from doppel_torch.spec.load import load_patch
    from doppel_torch.spec.patches import PATCHES
    from doppel_torch.spec.program import lower

    parser = argparse.ArgumentParser(prog="python -m doppel_torch.backends.triton.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x 10, repeatable (default 90)")
    parser.add_argument("--synth", action="append", choices=["voice", "voicefm", "parametric"],
                        help="repeatable (default: all three)")
    parser.add_argument("--patch", action="append", default=[], metavar="FILE.py[:NAME]",
                        help="also compile a user patch (repeatable; see doppel_torch.spec.load)")
    parser.add_argument("--phase-dtype", choices=["float64", "float32", "both"], default="both")
    parser.add_argument("--explicit-noise", action="store_true", help="also compile the noise= variant")
    parser.add_argument("--grad", action="store_true", help="also compile the backward kernels (float64)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: this compiles the GPU code path")
    phases = {"float64": [torch.float64], "float32": [torch.float32], "both": [torch.float64, torch.float32]}
    rows = []
    for arch in args.arch or [90]:
        patches = [PATCHES[name]() for name in args.synth or ([] if args.patch else PATCHES)]
        try:
            programs = [lower(patch) for patch in patches + [load_patch(spec) for spec in args.patch]]
        except ValueError as err:
            parser.error(str(err))
        for program in programs:
            for phase in phases[args.phase_dtype]:
                for has_noise in (False, True) if args.explicit_noise else (False,):
                    new = compile_synth(program, arch, phase, torch.float32, has_noise)
                    if args.grad and phase == torch.float64:
                        new += compile_synth(program, arch, phase, torch.float32, has_noise, grad=True)
                    rows += new
                    if not args.json:
                        for r in new:
                            print(f"{r['synth']:10s} {r['kernel']:12s} {r['arch']} phase {r['phase_dtype']} "
                                  f"noise={'tensor' if r['has_noise'] else 'keyed'}  regs {r.get('reg', '?'):>3} "
                                  f"stack {r.get('stack', '?'):>4} B  local {r.get('local', '?')} B  "
                                  f"cubin {r['cubin_bytes'] / 1024:7.0f} KiB  {r['compile_s']:5.1f} s", flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
