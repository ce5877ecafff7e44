"""bf16 on a CPU only where it is native: a CPU that emulates it runs 20-40x slower, so the CLI
falls back to fp32 there and says why (issue 16.1: the demo took hours on an AVX2-only CPU)."""

from __future__ import annotations

import pytest
import torch
from test_cli import base_args

from fundus_lit.cli import cli_main
from fundus_lit.core.precision import ENV, cpu_bf16, cpu_precision, runs_on_cpu


def _cpu(monkeypatch, bf16: bool, amx: bool = False) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("bf16", "amx", "native"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_native_bf16_follows_the_cpu_instructions(monkeypatch, bf16, amx, native):
    _cpu(monkeypatch, bf16, amx)
    assert cpu_bf16().native is native


def test_onednn_capped_below_bf16_counts_as_emulated(monkeypatch):
    _cpu(monkeypatch, bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    found = cpu_bf16()
    assert not found.native and "ONEDNN_MAX_CPU_ISA=AVX2" in found.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert cpu_bf16().native


def test_environment_override_and_its_typos(monkeypatch):
    _cpu(monkeypatch, bf16=False)
    monkeypatch.setenv(ENV, "native")
    assert cpu_bf16().native
    monkeypatch.setenv(ENV, "emulated")
    found = cpu_bf16()
    assert not found.native and ENV in found.reason
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ValueError, match=ENV):
        cpu_bf16()


@pytest.mark.parametrize("requested", ["bf16-mixed", "bf16-true", "bf16"])
def test_bf16_falls_back_to_fp32_where_emulated_and_says_why(monkeypatch, requested):
    _cpu(monkeypatch, bf16=False)
    chosen, message = cpu_precision(requested)
    assert chosen == "32-true"
    assert requested in message and "32-true" in message and "no native bf16" in message


def test_bf16_is_kept_where_native_and_other_precisions_untouched(monkeypatch):
    _cpu(monkeypatch, bf16=True)
    chosen, message = cpu_precision("bf16-mixed")
    assert chosen == "bf16-mixed" and "native bf16" in message
    for other in ("32-true", "16-mixed", 64, None):
        assert cpu_precision(other) == (other, None)


def test_accelerators_that_run_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runs_on_cpu("cpu") and runs_on_cpu("auto") and runs_on_cpu(None)
    assert not runs_on_cpu("gpu") and not runs_on_cpu("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not runs_on_cpu("auto") and runs_on_cpu("cpu")


@pytest.mark.parametrize(("native", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_cli_picks_the_trainer_precision_from_the_cpu(
    monkeypatch, tmp_path, capsys, native, expected
):
    monkeypatch.setenv(ENV, "native" if native else "emulated")
    cli = cli_main([*base_args(tmp_path), "--trainer.precision=bf16-mixed"], run=False)
    assert cli.trainer.precision == expected
    err = capsys.readouterr().err
    assert f"fundus-lit: precision bf16-mixed{' -> 32-true' if not native else ''}" in err
