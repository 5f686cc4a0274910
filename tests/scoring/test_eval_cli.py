"""``mergehub eval``: the score table, --json, settings from options, and bad input (exit 2)."""

from __future__ import annotations

import json

from mergehub.engine import cli

from .conftest import write_jsonl

RECORDS = [{"prompt": "x=", "target": "abc"}, {"prompt": "y:", "target": "0123"},
           {"prompt": "z:", "target": "0123\nx"}]


def test_table(tmp_path, successor_model, capsys):
    gen = write_jsonl(tmp_path / "gen.jsonl", RECORDS)
    text = tmp_path / "wiki.txt"
    text.write_text("abc\n\n0123\n")
    assert cli.main(["eval", str(successor_model), "--task", str(gen), "--task", str(text)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "metric", "n", "score", "95%", "CI", "seconds"]
    assert lines[2].split()[:4] == ["gen", "exact_match", "3", "0.667"]
    assert lines[3].split()[:3] == ["wiki", "perplexity", "(lower"]
    assert "scored on cpu" in lines[-1]


def test_json_and_generate_options(tmp_path, successor_model, capsys):
    gen = write_jsonl(tmp_path / "gen.jsonl", RECORDS)
    assert cli.main(["eval", str(successor_model), "--task", str(gen), "--stop", "", "--max-new-tokens", "6",
                     "--json", "--samples", "1", "--limit", "3", "--batch-size", "2", "--device", "cpu"]) == 0
    [score] = json.loads(capsys.readouterr().out)
    assert score["settings"] == {"max_new_tokens": 6, "stop": "", "strip": True}
    assert (score["n"], score["score"]) == (3, 2 / 3)  # "0123\nx" now matches, "0123" does not
    assert score["samples"] == [{"prompt": "x=", "output": "abc", "target": "abc", "correct": True}]


def test_stop_escapes(tmp_path, successor_model, capsys):
    gen = write_jsonl(tmp_path / "gen.jsonl", RECORDS)
    assert cli.main(["eval", str(successor_model), "--task", str(gen), "--stop", "\\n", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["settings"]["stop"] == "\n"


def test_bad_input_exits_2_with_one_line(tmp_path, successor_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x=", "target": "abc"}\n{"prompt": 1}\n')
    cases = [
        (["--task", str(bad)], f"{bad}, line 2: missing 'target'"),
        (["--task", str(tmp_path / "none.jsonl")], "no such file"),
        (["--task", str(write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "choices": ["a", "b"], "answer": 0}])),
          "--stop", "x"], "apply to generate tasks only"),
    ]
    for extra, expected in cases:
        assert cli.main(["eval", str(successor_model)] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mergehub: error: ") and expected in err
    assert cli.main(["eval", str(tmp_path), "--task", str(tmp_path / "c.jsonl")]) == 2
    assert "no *.safetensors weights" in capsys.readouterr().err
