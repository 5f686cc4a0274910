"""evaluate_model's scores against predictable models and direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from mergehub.scoring import TaskError, TaskScore, evaluate_model, load_task
from mergehub.scoring.model import load_model
from mergehub.scoring.stats import wilson_interval

from .conftest import write_jsonl


def test_exact_match_with_stop_strings_and_strip(tmp_path, successor_model):
    # the successor model answers "abc" after "=", and "0123" (then "\n") after ":"
    records = [{"prompt": "x=", "target": "abc"}, {"prompt": "y=", "target": " abc "},
               {"prompt": "z:", "target": "0123"}, {"prompt": "w:", "target": "0123\nx"},
               {"prompt": "v=", "target": "ab"}]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    [score] = evaluate_model(successor_model, [load_task(path)], sample_size=2)
    assert isinstance(score, TaskScore)
    assert (score.n, score.score, score.metric, score.kind) == (5, 3 / 5, "exact_match", "generate")
    assert (score.ci_low, score.ci_high) == pytest.approx(wilson_interval(3, 5))
    assert score.samples == [{"prompt": "x=", "output": "abc", "target": "abc", "correct": True},
                             {"prompt": "y=", "output": "abc", "target": " abc ", "correct": True}]
    assert score.device == "cpu" and score.seconds > 0 and score.task == "t"

    strict = load_task(path, settings={"strip": False, "stop": ""})
    [score] = evaluate_model(successor_model, [strict], sample_size=10)
    assert [s["output"] for s in score.samples] == ["abc", "abc", "0123\nx", "0123\nx", "abc"]
    assert [s["correct"] for s in score.samples] == [True, False, False, True, False]

    short = load_task(path, settings={"max_new_tokens": 2})
    [score] = evaluate_model(successor_model, [short], batch_size=2)
    assert score.n == 5 and score.score == 1 / 5  # only "ab" matches the first two tokens


def test_long_prompts_keep_their_last_tokens(tmp_path, successor_model):
    records = [{"prompt": "q" * 300 + "=", "target": "abc"}]  # the model's context is 128 tokens
    [score] = evaluate_model(successor_model, [write_jsonl(tmp_path / "t.jsonl", records)])
    assert score.samples[0]["output"] == "abc"
    task = load_task(tmp_path / "t.jsonl", settings={"max_new_tokens": 128})
    with pytest.raises(TaskError, match="leaves no room for a prompt; lower max_new_tokens"):
        evaluate_model(successor_model, [task])


def test_limit_scores_the_first_examples(tmp_path, successor_model):
    records = [{"prompt": "x=", "target": "abc"}] * 3 + [{"prompt": "x=", "target": "no"}]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    [score] = evaluate_model(successor_model, [path], limit=3)
    assert (score.n, score.score) == (3, 1.0)


def _direct_logprob(model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(context) - 1 + j, t].item() for j, t in enumerate(continuation))


@pytest.mark.parametrize("normalize", ["none", "tokens", "bytes"])
def test_choice_picks_the_highest_loglikelihood(tmp_path, random_model, normalize):
    records = [{"prompt": "ab=", "choices": ["a", "bcd", "0"], "answer": 1},
               {"prompt": "longer prompt:", "choices": ["x", "yy"], "answer": 0},
               {"prompt": "c", "choices": ["dd", "d", "12", "3"], "answer": "3"}]
    task = load_task(write_jsonl(tmp_path / "c.jsonl", records), settings={"normalize": normalize})
    [score] = evaluate_model(random_model, [task], batch_size=3)
    lm = load_model(random_model, "cpu")
    correct = 0
    with torch.inference_mode():
        for record, sample in zip(task.examples, score.samples):
            context = lm.tokenizer(record["prompt"])["input_ids"]
            expected = []
            for choice in record["choices"]:
                continuation = lm.tokenizer(choice, add_special_tokens=False)["input_ids"]
                length = {"none": 1, "tokens": len(continuation), "bytes": len(choice.encode())}[normalize]
                expected.append(_direct_logprob(lm.model, context, continuation) / length)
            assert sample["scores"] == pytest.approx(expected, abs=2e-4)
            assert sample["picked"] == max(range(len(expected)), key=expected.__getitem__)
            correct += sample["picked"] == record["answer"]
    assert score.score == correct / 3 and score.metric == "accuracy"


def test_choice_with_the_successor_model(tmp_path, successor_model):
    records = [{"prompt": "q=", "choices": ["abc", "abd", "xyz"], "answer": 0},
               {"prompt": "q:", "choices": ["0124", "0123"], "answer": 1},
               {"prompt": "q:", "choices": ["0123", "abc"], "answer": 1}]
    [score] = evaluate_model(successor_model, [write_jsonl(tmp_path / "c.jsonl", records)])
    assert [s["picked"] for s in score.samples] == [0, 1, 0]
    assert score.score == pytest.approx(2 / 3)


def _direct_perplexity(model_dir, texts: list[str], window: int | None = None) -> tuple[float, list[float]]:
    """exp(total NLL / predicted tokens), scoring windows of ``window`` tokens independently."""
    lm = load_model(model_dir, "cpu")
    total, count, per_doc = 0.0, 0, []
    with torch.inference_mode():
        for text in texts:
            ids = lm.tokenizer(text)["input_ids"]
            step = (window or len(ids)) - 1
            nll = 0.0
            for start in range(1, len(ids), step):
                chunk = torch.tensor([ids[start - 1:start + step]])
                logits = lm.model(chunk).logits[0, :-1].float()
                nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            total, count = total + nll, count + len(ids) - 1
            per_doc.append(math.exp(nll / (len(ids) - 1)))
    return math.exp(total / count), per_doc


def test_perplexity_is_exp_of_mean_token_nll(tmp_path, random_model):
    docs = ["abc def ghi", "the quick brown fox jumps", "a", "zz top:=\nnext line", "one more document here"]
    path = tmp_path / "wiki.txt"
    path.write_text("\n\n".join(docs) + "\n")
    [score] = evaluate_model(random_model, [path], batch_size=2)
    expected, per_doc = _direct_perplexity(random_model, docs)
    assert score.score == pytest.approx(expected, rel=1e-5)
    assert [s["perplexity"] for s in score.samples] == pytest.approx(per_doc, rel=1e-5)
    assert score.n == 5 and score.higher_is_better is False
    assert score.ci_low < score.score < score.ci_high

    windowed = load_task(path, settings={"window": 4})
    [score] = evaluate_model(random_model, [windowed], batch_size=3)
    assert score.score == pytest.approx(_direct_perplexity(random_model, docs, window=4)[0], rel=1e-5)


def test_batch_size_does_not_change_scores(tmp_path, random_model):
    records = [{"prompt": p, "target": "x"} for p in ("a=", "bcd:", "efghij=", "k", "lmnopqrs:")]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    outputs = [[s["output"] for s in evaluate_model(random_model, [path], batch_size=b)[0].samples]
               for b in (1, 2, 64)]
    assert outputs[0] == outputs[1] == outputs[2]


def test_to_dict_is_json(tmp_path, successor_model):
    import json

    [score] = evaluate_model(successor_model, [write_jsonl(tmp_path / "t.jsonl", [{"prompt": "=", "target": "abc"}])])
    d = json.loads(json.dumps(score.to_dict()))
    assert d["score"] == 1.0 and d["settings"]["stop"] == "\n" and set(d) >= {"task", "ci_low", "samples"}
