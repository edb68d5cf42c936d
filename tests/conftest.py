"""Fixtures the test files share: the course tokenizer, tiny random Llamas, and Ctrl-C from inside training."""
import os
import signal

import pytest
import torch


def pytest_configure(config):
    """One torch thread per test process. The tests' tensors are small, where threads cost more than they save, and
    under pytest-xdist each worker has a core of its own; the notebook kernels a worker starts get one thread too."""
    torch.set_num_threads(1)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"


# Eight short review pairs of mixed token lengths (prompts of 2-4 tokens, responses of 3-8 with EOS), for tiny runs
# that must pad and, at a small max_length, truncate: tests/test_trl_parity.py and tests/test_diagnose.py
REVIEW_PAIRS = [
    {"prompt": "Review:", "chosen": " Lovely, warm and funny.", "rejected": " Dull."},
    {"prompt": "Verdict?", "chosen": " Moving.", "rejected": " A boring mess, sadly."},
    {"prompt": "Was it good?", "chosen": " Yes, a delight.", "rejected": " No."},
    {"prompt": "The plot:", "chosen": " Two friends rebuild a boat.", "rejected": " Stuff happens."},
    {"prompt": "The acting?", "chosen": " True.", "rejected": " Wooden and flat."},
    {"prompt": "Again?", "chosen": " Gladly, for the music.", "rejected": " Never."},
    {"prompt": "The ending:", "chosen": " Quiet and earned.", "rejected": " It just stops."},
    {"prompt": "In a word?", "chosen": " Lovely.", "rejected": " Long."},
]


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer, from the course cache (`make test` builds it first, in the floor check)."""
    from dpo_edu.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def real_model():
    """(model, tokenizer): the course's SmolLM2-135M-Instruct on the CPU, loaded once; read it, never train it."""
    from dpo_edu.models import load_model

    model, tokenizer = load_model(device="cpu")
    return model.eval(), tokenizer


def tiny_llama(vocab_size: int, *, seed: int = 0, hidden_size: int = 32, layers: int = 2, **settings):
    """A random LlamaForCausalLM with the course tokenizer's vocabulary: the same weights for the same seed and sizes.

    `settings`: other LlamaConfig fields (tie_word_embeddings is True unless given).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = hidden_size // 8  # head size 8; grouped-query attention, 2 query heads per key/value head
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=256, **{"tie_word_embeddings": True, **settings})
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """tiny_model(seed=0, **settings): a fresh 2-layer Llama of hidden size 32 (1.6M parameters, nearly all embedding)."""
    return lambda seed=0, **settings: tiny_llama(len(tokenizer), seed=seed, **settings)


@pytest.fixture(scope="session")
def tinier_model(tokenizer):
    """tinier_model(seed=0, **settings): a fresh 1-layer Llama of hidden size 16, where any model will do."""
    return lambda seed=0, **settings: tiny_llama(len(tokenizer), seed=seed, hidden_size=16, layers=1, **settings)


def interrupting(train_dpo, *, step: int, run: int = 1, times: int = 1):
    """`train_dpo` whose `run`-th call sends SIGINT `times` times to this process at optimizer step `step`, before that
    step's on_step callback: once asks training to finish the step and save, twice stops it at once."""
    calls = []

    def train_then_ctrl_c(*args, on_step, **kwargs):
        calls.append(None)
        this_run = len(calls)

        def on_step_after_ctrl_c(record):
            if this_run == run and record["step"] == step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
            return on_step(record)

        return train_dpo(*args, on_step=on_step_after_ctrl_c, **kwargs)

    return train_then_ctrl_c


@pytest.fixture
def ctrl_c(monkeypatch):
    """ctrl_c(module, step=, run=1, times=1): `module.train_dpo` (as `module` imported it) presses Ctrl-C as
    `interrupting` says; returns a function that puts the real train_dpo back. SIGINT raises KeyboardInterrupt during
    the test, as in a terminal (CI may run the tests with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def arm(module, **when):
        original = module.train_dpo
        monkeypatch.setattr(module, "train_dpo", interrupting(original, **when))
        return lambda: monkeypatch.setattr(module, "train_dpo", original)

    yield arm
    signal.signal(signal.SIGINT, previous)
