"""The Hugging Face engine (the reference) on a small random Qwen2: determinism, log-probs, stops, errors."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from fpa_ray.config import SamplerConfig
from fpa_ray.data.synthetic import generate
from fpa_ray.config import SyntheticTaskConfig, TinyModelConfig
from fpa_ray.sampler.engines import HFEngine, SampleRequest, SamplerError, check_checkpoint, make_engine, sample_seed
from fpa_ray.tiny import build_tiny_policy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    problems = generate(SyntheticTaskConfig(), "train", 300)
    return build_tiny_policy(tmp_path_factory.mktemp("policy"), TinyModelConfig(), (f"{p.prompt}\n{p.solution}" for p in problems))


def _requests(engine, texts, seeds):
    return [SampleRequest(engine.tokenizer(t, add_special_tokens=False)["input_ids"], s) for t, s in zip(texts, seeds)]


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, "p1", 0) == sample_seed(0, "p1", 0)
    seeds = {sample_seed(0, f"p{i}", j) for i in range(50) for j in range(8)}
    assert len(seeds) == 400 and all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(1, "p1", 0) != sample_seed(0, "p1", 0)


def test_each_sample_depends_only_on_its_seed(checkpoint):
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", max_new_tokens=12, dtype="float32"), batch_size=3)
    texts = ["Start with 5.", "Start with 12. Add 3, then add", "Hi", "Start with 99. Multiply by"]
    seeds = [11, 22, 33, 44]
    together = engine.generate(_requests(engine, texts, seeds))
    alone = [engine.generate(_requests(engine, [t], [s]))[0] for t, s in zip(texts, seeds)]
    reversed_batch = engine.generate(_requests(engine, texts[::-1], seeds[::-1]))[::-1]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone] == [c.token_ids for c in reversed_batch]
    other_seed = engine.generate(_requests(engine, texts[:1], [12]))[0]
    assert other_seed.token_ids != together[0].token_ids  # (random weights: 12 tokens from 384 almost never repeat)


def test_logprobs_are_those_of_the_sampled_tokens(checkpoint):
    config = SamplerConfig(engine="hf", max_new_tokens=10, temperature=1.0, dtype="float32")
    engine = HFEngine(checkpoint, config)
    request = _requests(engine, ["Start with 7. Add 3."], [5])[0]
    completion = engine.generate([request])[0]
    assert len(completion.logprobs) == len(completion.token_ids) and all(lp <= 0 for lp in completion.logprobs)
    reference = engine.continuation_logprobs(request.prompt_token_ids, completion.token_ids)
    assert max(abs(a - b) for a, b in zip(completion.logprobs, reference)) < 1e-4  # T=1: processed == raw
    hot = HFEngine(checkpoint, config.model_copy(update={"temperature": 2.0, "logprobs_mode": "processed"}))
    raw = HFEngine(checkpoint, config.model_copy(update={"temperature": 2.0, "logprobs_mode": "raw"}))
    a, b = hot.generate([request])[0], raw.generate([request])[0]
    assert a.token_ids == b.token_ids and a.logprobs != b.logprobs  # same draw, different distributions reported


def test_greedy_matches_transformers_generate(checkpoint):
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", temperature=0.0, max_new_tokens=8, dtype="float32"))
    request = _requests(engine, ["Start with 40. Add 2."], [0])[0]
    ours = engine.generate([request])[0].token_ids
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    theirs = model.generate(torch.tensor([request.prompt_token_ids]), max_new_tokens=8, do_sample=False, eos_token_id=engine.eos)
    assert ours == theirs[0, len(request.prompt_token_ids) :].tolist()[: len(ours)]


def test_top_p_keeps_the_nucleus(checkpoint):
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", top_p=0.05, dtype="float32"))
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0]])
    chosen, logprob = engine._sample(logits, [torch.Generator().manual_seed(s) for s in range(1)])
    assert chosen.item() == 0 and logprob.item() == pytest.approx(0.0)  # only the top token is left
    assert math.isfinite(logprob.item())


def test_stop_strings_end_the_text(checkpoint):
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", max_new_tokens=30, dtype="float32"))
    request = _requests(engine, ["Start with"], [3])[0]
    free = engine.generate([request])[0]
    stop = free.text[3:5] if len(free.text) >= 5 else free.text[-1:]
    stopped = engine.generate([request], stop=(stop,))[0]
    assert stopped.finish_reason == "stop" and stop not in stopped.text and len(stopped.token_ids) <= len(free.token_ids)


def test_bad_checkpoints_are_named(tmp_path, checkpoint):
    with pytest.raises(SamplerError, match=r"does not exist"):
        check_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamplerError, match=r"has no config.json"):
        check_checkpoint(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SamplerError, match=r"transformers could not load .*broken"):
        make_engine(broken, SamplerConfig(engine="hf"))


def test_hf_refresh_and_sync_load_new_weights_and_the_probe_catches_one_that_did_not_take(checkpoint, tmp_path, monkeypatch):
    from fpa_ray.weights.probe import SyncDidNotTake, checked, learner_logprobs, probe_gap, probe_ids
    from fpa_ray.weights.transports import Disk

    updated = tmp_path / "updated"
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(updated)
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", dtype="float32"))
    assert probe_gap(engine, updated) > 1e-2
    expected = learner_logprobs(updated, *probe_ids(engine.tokenizer))  # the learner's probe on the new weights
    assert Disk.receive(engine, str(updated), expected, 1e-3) < 1e-4  # the disk transport's engine end
    stale = HFEngine(checkpoint, SamplerConfig(engine="hf", dtype="float32"))
    monkeypatch.setattr(stale, "update_weights", lambda weights: None)  # a load that silently kept the old weights
    with pytest.raises(SyncDidNotTake, match=r"the sync did not take"):
        Disk.receive(stale, str(updated), expected, 1e-3)

    # In memory: the learner's tensors and its probe log-probs on them, no directory.
    fresh = HFEngine(checkpoint, SamplerConfig(engine="hf", dtype="float32"))
    fresh.update_weights(model.state_dict().items())
    assert checked(fresh, expected, 1e-3, "the learner's weights") < 1e-4
    with pytest.raises(SyncDidNotTake, match=r"differ from the learner's by .* the sync did not take"):
        checked(stale, expected, 1e-3, "the learner's weights")
    with pytest.raises(SamplerError, match=r"do not fit the live model: missing \['model.norm.weight'\]"):
        fresh.update_weights([(k, v) for k, v in model.state_dict().items() if k != "model.norm.weight"])


def test_checkpoints_share_an_engine_only_with_the_same_config_and_tokenizer(checkpoint, tmp_path):
    import json
    import shutil

    from fpa_ray.sampler.stage import engine_key

    same = tmp_path / "same"
    shutil.copytree(checkpoint, same)
    (same / "model.safetensors").write_bytes(b"other weights")  # weights are what an engine loads in place
    (same / "warmstart.json").write_text("{}")  # and files no engine reads do not matter
    tokenizer_config = json.loads((same / "tokenizer_config.json").read_text())
    (same / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "is_local": True}, indent=4))  # as transformers re-saves it
    assert engine_key(same) == engine_key(checkpoint)
    for name, text in (("config.json", '{"torch_dtype": "bfloat16"}'), ("tokenizer_config.json", "{}"), ("generation_config.json", "{}")):
        other = tmp_path / name
        shutil.copytree(checkpoint, other)
        (other / name).write_text(text)
        assert engine_key(other) != engine_key(checkpoint), name


def test_hf_engine_receives_the_learners_broadcast_over_a_gloo_group(checkpoint):
    """The collective path without Ray: rank 0 (a thread here, the learner's rank 0 in a run)
    broadcasts every tensor; the engine, rank 1, streams them into its live model."""
    import socket
    import tempfile
    import threading
    from dataclasses import replace

    from fpa_ray.weights import group as weight_group
    from fpa_ray.weights.probe import learner_logprobs, probe_ids
    from fpa_ray.weights.transports import Collective

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    state = model.state_dict()
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", dtype="float32"))
    with socket.socket() as probe:  # no Ray here: the address by hand
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = weight_group.GroupAddress("test-weights", "127.0.0.1", port, 2, "gloo")
    sender = replace(address, name="test-weights-sender")  # both ranks in one process: two registry keys
    errors = []

    def learner():
        try:
            weight_group.join(sender, 0, "127.0.0.1")
            weight_group.send(sender.name, state.values(), torch.device("cpu"))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    thread = threading.Thread(target=learner)
    thread.start()
    assert engine.join_weight_group(address, 1, "127.0.0.1") == 1
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        expected = learner_logprobs(tmp, *probe_ids(engine.tokenizer))
    gap = Collective.receive(engine, (address.name, weight_group.specs(state.items())), expected, 1e-3)
    thread.join(timeout=60)
    assert not errors and gap < 1e-4
    assert all(torch.equal(engine.model.state_dict()[name], tensor) for name, tensor in state.items())
    weight_group.leave(address.name)
    weight_group.leave(sender.name)
    with pytest.raises(RuntimeError, match="weight group 'test-weights' is not open in this process"):
        next(weight_group.receive(address.name, [("x", "float32", (1,))], torch.device("cpu")))


def test_a_weight_group_whose_sampler_never_joins_fails_after_its_join_timeout():
    """A sampler lost before it joins (its node gone): the learner's rank 0 stops waiting after
    grpo.sync_join_timeout_s and opens a new group, instead of the transfer timeout's 10 minutes."""
    import socket
    import time

    import torch.distributed as dist

    from fpa_ray.weights import group as weight_group

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = weight_group.GroupAddress("never-joined", "127.0.0.1", port, 2, "gloo", join_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(dist.DistStoreError):
        weight_group.join(address, 0, "127.0.0.1")
    assert 1.5 < time.monotonic() - started < 30
    with pytest.raises(RuntimeError, match="not open"):
        weight_group.send(address.name, [], torch.device("cpu"))


def test_the_hf_engine_moves_its_model_and_its_receive_buffers_to_the_device_it_holds(checkpoint, monkeypatch):
    """On a GPU the model and the weight group's buffers must be CUDA tensors (NCCL takes no others):
    `meta` stands for that device here."""
    from fpa_ray.devices import STAND_IN
    from fpa_ray.sampler import engines
    from fpa_ray.weights import group as weight_group

    monkeypatch.delenv(STAND_IN, raising=False)
    with pytest.raises(SamplerError, match="the sampler actor holds 1 GPU"):
        HFEngine(checkpoint, SamplerConfig(engine="hf", gpus_per_actor=1))
    monkeypatch.setattr(engines, "compute_device", lambda gpus, what: torch.device("meta"))
    engine = HFEngine(checkpoint, SamplerConfig(engine="hf", gpus_per_actor=1))
    assert engine.model.device.type == "meta"
    devices = []
    monkeypatch.setattr(weight_group, "receive", lambda name, expected, device: devices.append(device) or iter(()))
    with pytest.raises(SamplerError):  # nothing arrived, so the model misses every tensor
        engine.receive_weights("w", [])
    assert devices == [torch.device("meta")]


def test_a_broadcast_to_a_sampler_that_stops_answering_fails_after_the_transfer_timeout():
    """A sampler that joined the weight group and then stopped answering (hung, or its node lost on NCCL,
    where nothing raises by itself): the learner's rank 0 stops after the group's transfer timeout with
    TransferFailed, naming the group and the tensor, and leaving aborts the group."""
    import socket
    import threading
    import time
    from dataclasses import replace

    from fpa_ray.weights import group as weight_group

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = weight_group.GroupAddress("silent", "127.0.0.1", port, 2, "gloo", join_timeout_s=30, transfer_timeout_s=2)
    silent = replace(address, name="silent-sampler")  # both ranks in one process: two registry keys
    thread = threading.Thread(target=weight_group.join, args=(silent, 1, "127.0.0.1"))  # joins, then never receives
    thread.start()
    weight_group.join(address, 0, "127.0.0.1")
    thread.join(timeout=30)
    started = time.monotonic()
    with pytest.raises(weight_group.TransferFailed, match=r"weight group 'silent': tensor 0 not transferred within 2 s"):
        weight_group.send(address.name, [torch.ones(1 << 22)], torch.device("cpu"))
    assert 1.5 < time.monotonic() - started < 20
    weight_group.leave(address.name)
    weight_group.leave(silent.name)
    with pytest.raises(RuntimeError, match="not open"):
        weight_group.send(address.name, [], torch.device("cpu"))
