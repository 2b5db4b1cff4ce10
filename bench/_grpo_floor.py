"""A practical floor for one GRPO step: the same model work, with generation as cheap as a forward pass.

A step needs, at the least, a forward over the batch to sample it, a reference forward, and the policy's
forward + backward + AdamW step. Sampling token by token can never be cheaper than one batched
teacher-forced forward over the same sequences, so timing that instead gives what a step would cost with
zero per-token overhead, at this precision, on this machine. The gap between a tool's step and this floor
is overhead that code could remove; the floor itself only changes with less work (FLOPs) or faster kernels.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path


def run_floor(settings, workdir: Path):
    import torch
    from _grpo_runners import RunRecord
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings.model_dir)
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=torch.float32)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    prompt_len = len(tokenizer(settings.train_prompts[0]["prompt"])["input_ids"])
    rows, completion = settings.prompts_per_step * settings.group_size, settings.max_new_tokens
    generator = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(3, model.config.vocab_size, (rows, prompt_len + completion), generator=generator)
    keep = completion + 1
    record = RunRecord(tool="floor", step_s=[], generate_s=[], completion_length=[])
    for _ in range(settings.steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.eval()
            model(ids, logits_to_keep=keep)  # stands for sampling the batch
            t_gen = time.perf_counter()
            ref(ids, logits_to_keep=keep)
        model.train()
        logits = model(ids, logits_to_keep=keep).logits[:, :-1]
        loss = torch.log_softmax(logits, -1).gather(-1, ids[:, -completion:, None]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        record.step_s.append(time.perf_counter() - t0)
        record.generate_s.append(t_gen - t0)
        record.completion_length.append(float(completion))
    return record
