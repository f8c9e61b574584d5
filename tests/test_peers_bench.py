"""bench/peers_bench.py's pure parts: its command line, the per-token arithmetic, the table, and a
peer whose interpreter is missing reported "not installed" (real subprocesses, nothing mocked)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench" / "peers_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("peers_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers_bench"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("peers_bench", None)


def test_arguments_default_to_every_path_and_this_repo(bench):
    args = bench.parse_args([])
    assert args.paths == list(bench.PATHS)
    assert args.shape == "both" and args.rounds == 3 and args.tokens == 64
    assert args.repo == REPO_ROOT
    assert args.llama_python == "" and not args.llama_repack  # this interpreter, repacking off
    assert bench.PATHS["llamacpp-q4_0"].python == "llama"  # run by --llama-python when given


def test_arguments_select_paths_and_refuse_unknown_ones(bench, capsys):
    args = bench.parse_args(["--paths", "pytorch, llamacpp-q4_0", "--shape", "gpt2", "--rounds", "1"])
    assert args.paths == ["pytorch", "llamacpp-q4_0"] and args.shape == "gpt2" and args.rounds == 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--paths", "pytorch,vllm"])
    assert "unknown vllm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])


def test_per_token_time_is_the_difference_over_the_decoding_steps(bench):
    # 65 new tokens in 1.30 s, 1 in 0.02 s: 64 decoding steps in 1.28 s
    assert bench.per_token_seconds(0.02, 1.30, 64) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        bench.per_token_seconds(0.02, 1.30, 0)


def test_rows_relate_each_path_to_pytorch_and_llama_cpp_q4(bench):
    results = [
        bench.Result("pytorch", "PyTorch", per_token=[0.040, 0.030, 0.050], ttft=[0.2], cold=[3.0]),
        bench.Result("llamacpp-q4_0", "llama.cpp Q4_0", per_token=[0.010], ttft=[0.1], cold=[0.5]),
        bench.Result("mtnsails-int4", "mtnsails int4", per_token=[0.008, 0.008], ttft=[0.05], cold=[0.6]),
        bench.Result("ct2-int8", "CTranslate2 int8", status="not installed (no ctranslate2 in x)"),
    ]
    rows = {row["path"]: row for row in bench.rows(results)}
    assert rows["pytorch"]["ms_per_token"] == pytest.approx(40.0)  # the median of the rounds
    assert rows["mtnsails-int4"]["x_pytorch"] == pytest.approx(5.0)
    assert rows["mtnsails-int4"]["x_llamacpp_q4_0"] == pytest.approx(1.25)
    assert rows["mtnsails-int4"]["tokens_per_s"] == pytest.approx(125.0)
    assert rows["ct2-int8"]["ms_per_token"] is None
    table = bench.markdown_table(bench.rows(results))
    assert "| mtnsails int4 | 8.00 | 125.0 | 5.00x | 1.25x | 50 ms | 0.60 s |" in table
    assert "| CTranslate2 int8 | not installed (no ctranslate2 in x) |" in table


def test_a_peer_without_its_interpreter_or_module_is_not_installed(bench, tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert bench.engine_missing(str(missing), "ctranslate2") == f"not installed ({missing} does not exist)"
    assert bench.engine_missing("", "ctranslate2") == "not installed (no interpreter given)"
    absent = bench.engine_missing(sys.executable, "no_such_engine_module")
    assert absent == f"not installed (no no_such_engine_module in {sys.executable})"
    assert bench.engine_missing(sys.executable, "json") is None


def test_the_command_line_rejects_an_unknown_path(bench):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--paths", "tensorrt"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 2 and "choose from pytorch" in done.stderr
