"""Column constants of the program tables for the Triton kernels, generated from `doppel_torch.spec.program.TABLES`.

`OSCILLATORS_PITCH` is the column of "pitch" in the "oscillators" table, `OSCILLATORS_N_COLS` its width, and the
codes (`OSC_FM`, `INPUT_LFO`, ...) are those of the spec; all `tl.constexpr`, so a kernel reads
`tl.load(osc_ptr + row * C.OSCILLATORS_N_COLS + C.OSCILLATORS_PITCH)` and no offset is written by hand.
"""

import triton.language as tl

from doppel_torch.spec.program import CODES, TABLES

for _table, _columns in TABLES.items():
    for _i, _name in enumerate(_columns):
        globals()[f"{_table.upper()}_{_name.upper()}"] = tl.constexpr(_i)
    globals()[f"{_table.upper()}_N_COLS"] = tl.constexpr(len(_columns))
for _code, _value in CODES.items():
    globals()[_code] = tl.constexpr(_value)

# The float constants both kernels read from one phase-dtype vector (float literals in Triton are float32, and these
# must not be rounded): CONST_TWO_PI is the position of "two_pi" in CONSTS.
CONSTS = ("two_pi", "pi", "control_rate", "sample_rate", "eps", "lfo_exponent", "log10_2", "ctrl_scale", "nyquist",
          "log2e")
for _i, _name in enumerate(CONSTS):
    globals()[f"CONST_{_name.upper()}"] = tl.constexpr(_i)
