#!/usr/bin/env python3
"""Makes a tiny Hugging Face model directory to try weft's fine-tuning on:
a randomly initialised Llama (2 layers, hidden 64) saved by transformers'
save_pretrained, with a byte-level BPE tokenizer trained on TEXT and saved by
its save_pretrained (tokenizer.json, tokenizer_config.json, a chat template).

    .venv/bin/python tools/make_tiny_hf_model.py OUT_DIR [--text FILE] [--vocab N]

The directory looks like any checkpoint from the Hub (config.json,
model.safetensors, generation_config.json, tokenizer files): everything a
fine-tuning run reads from a real model, at a size that trains on a CPU in
seconds. Deterministic (fixed seeds); nothing is downloaded.
"""
import argparse
import os
import sys

DEFAULT_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                            "finetune_tiny", "data", "midsummer_nights_dream.txt")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
                 "<|endoftext|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="text the tokenizer is trained on")
    parser.add_argument("--vocab", type=int, default=512, help="tokenizer vocabulary size")
    args = parser.parse_args()
    if not os.path.isfile(args.text):
        print(f"make_tiny_hf_model.py: --text {args.text} is not a file", file=sys.stderr)
        return 2

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with open(args.text, encoding="utf-8") as f:
        paragraphs = [p for p in f.read().split("\n\n") if p.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(paragraphs, trainers.BpeTrainer(
        vocab_size=args.vocab, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    os.makedirs(args.out_dir, exist_ok=True)
    model.save_pretrained(args.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(args.out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out_dir}: LlamaForCausalLM, {n} parameters, vocab {len(tokenizer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
