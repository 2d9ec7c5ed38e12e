"""The `midiforge` command: registry subcommands and error handling."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from midiforge import cli


def test_models_commands_round_trip(tmp_path, capsys):
    root = str(tmp_path / "reg")
    src = tmp_path / "m"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"abc")
    (src / "metrics.json").write_text('{"f1": 0.5}')
    assert (
        cli.main(
            ["models", "push", str(src), "--name", "tiny", "--kind", "transcriber", "--root", root]
        )
        == 0
    )
    assert cli.main(["models", "list", "--root", root]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "stock" in listing
    assert cli.main(["models", "show", "tiny", "--root", root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"] == {"f1": 0.5} and shown["kind"] == "transcriber"
    assert cli.main(["models", "pull", "tiny", "--to", str(tmp_path / "o"), "--root", root]) == 0
    assert (tmp_path / "o" / "model.onnx").read_bytes() == b"abc"


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert cli.main(["models", "pull", "../x", "--to", str(tmp_path / "o")]) == 2
    assert "invalid model name" in capsys.readouterr().err
    assert cli.main(["models", "show", "missing"]) == 2
    assert "no model named 'missing'" in capsys.readouterr().err
    assert cli.main(["corpus", "render", "--styles", "polka", "--out", str(tmp_path)]) == 2
    assert "polka" in capsys.readouterr().err
    assert cli.main(["corpus", "render", "--out", str(tmp_path), "--per_styel=2"]) == 2
    assert "per_styel" in capsys.readouterr().err


def test_config_and_file_mistakes_are_one_line_too(tmp_path, capsys):
    """YAML that does not parse, a folder as --config, bad --metrics JSON, an --out that
    is a file: one line and status 2 (these used to be tracebacks); the jobs/ scripts
    answer the same way."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: [1, 2\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(b"abc")
    (tmp_path / "afile").write_text("x")
    render = ["corpus", "render", "--out", str(tmp_path / "o")]
    cases = [
        ([*render, "--config", str(bad)], "not valid YAML"),
        ([*render, "--config", str(tmp_path)], "cannot read"),
        ([*render, "--per_style=[2"], "not valid YAML"),
        (["models", "push", str(tmp_path / "m"), "--name", "x", "--metrics", "{bad",
          "--root", str(tmp_path / "reg")], "--metrics is not a JSON object"),
        (["corpus", "render", "--styles", "fiddle", "--per-style", "1", "--seconds", "2",
          "--midi-only", "--out", str(tmp_path / "afile")], "afile"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    job = Path(__file__).parents[1] / "jobs" / "build_dataset.py"
    done = subprocess.run([sys.executable, str(job), "--out", str(tmp_path / "x")],
                          check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "build_dataset.py: error: give audio inputs" in done.stderr


def test_console_script_is_installed():
    exe = shutil.which("midiforge", path=str(Path(sys.executable).parent))
    assert exe
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "corpus" in out and "models" in out


def test_generate_refuses_bad_requests_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "x.mid")
    base = ["generate", "--model", "rules", "--out", out]
    for extra, message in (
        (["--key", "H"], "not a key: 'H'"),
        (["--seed", "-1"], "seed must be >= 0"),
        (["--program", "200"], "GM programs are 0..127"),
        (["--bars", "0"], "bars must be 1..256"),
    ):
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not Path(out).exists()
    assert cli.main([*base, "--key", "Am", "--seed", "3"]) == 0
    assert Path(out).read_bytes()[:4] == b"MThd"


def test_serve_overrides_reach_the_app_args_and_are_checked_before_ray(capsys):
    """`midiforge serve --key=value` used to be accepted and ignored."""
    from midiforge.serving.local import read_app_config, with_overrides

    config = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"
    base, _ = read_app_config(config)
    args = with_overrides(base, ["--generator_model=rules", "--max_audio_seconds=120"])
    assert args["generator_model"] == "rules" and args["max_audio_seconds"] == 120
    assert {k: v for k, v in args.items() if k not in ("generator_model", "max_audio_seconds")} == {
        k: v for k, v in base.items() if k not in ("generator_model", "max_audio_seconds")
    }
    # Refused with one line before any Ray starts: these return at once.
    assert cli.main(["serve", "--config", str(config), "--max_upload_bites=10"]) == 2
    assert "max_upload_bites" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(config), "--batch_max_size=0"]) == 2
    assert "batch_max_size must be finite and > 0" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(config), "--max_audio_seconds=.inf"]) == 2
    assert "max_audio_seconds must be finite" in capsys.readouterr().err


def test_generate_reads_its_config_and_overrides_and_refuses_typos(tmp_path, capsys):
    """`generate --config` and `--key=value` used to be accepted and ignored (a
    --time_signature=3/4 wrote 4/4); a misspelt key passed silently."""
    from midiforge import midi_io

    cfg = tmp_path / "g.yaml"
    cfg.write_text("bars: 3\nkey: Am\ntime_signature: 6/8\n")
    out = tmp_path / "g.mid"
    base = ["generate", "--model", "rules", "--out", str(out), "--seed", "1"]
    assert cli.main([*base, "--config", str(cfg)]) == 0
    pm = midi_io.load_midi(out.read_bytes())
    ts = pm.time_signature_changes[0]
    assert (ts.numerator, ts.denominator) == (6, 8)
    assert cli.main([*base, "--config", str(cfg), "--time_signature=3/1", "--bars", "2"]) == 0
    ts = midi_io.load_midi(out.read_bytes()).time_signature_changes[0]
    assert (ts.numerator, ts.denominator) == (3, 1)
    assert cli.main([*base, "--time-signature", "3/4"]) == 0
    assert midi_io.load_midi(out.read_bytes()).time_signature_changes[0].numerator == 3
    capsys.readouterr()
    assert cli.main([*base, "--bras=4"]) == 2
    assert "unknown config key(s): bras" in capsys.readouterr().err
    assert cli.main([*base, "--prompt", str(out)]) == 2  # rules continue no prompt
    assert "does not continue a prompt" in capsys.readouterr().err
    evaluate = ["lm", "evaluate", "--models", "rules", "--dataset", "x", "--out", str(tmp_path)]
    assert cli.main([*evaluate, "--temprature=0.8"]) == 2
    assert "no --config or --key=value" in capsys.readouterr().err
