"""Builders shared by the LLM tests (no tests here): a byte-level BPE tokenizer trained offline on a
few sentences, a tiny Llama made from a config with a fixed seed, and a GGUF file written from that
Llama with the ``gguf`` package the way llama.cpp's converter writes one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

SENTENCES = [
    "The river runs past the old mill and into the quiet valley below the hills.",
    "A small robot learned to sort red and blue blocks on the kitchen table.",
    "Every morning the baker opens the shop at six and sells warm bread to the neighbours.",
    "The train to the coast leaves at 9:45 and arrives shortly after noon.",
    "She wrote 12 letters in 3 days, then mailed them all from the station.",
    "Water boils at 100 degrees at sea level, but at a lower temperature on a mountain.",
    "The library keeps its maps in a cold room so the paper does not crack.",
    "Bees carry pollen from flower to flower, and the orchard gives more fruit.",
    "He tuned the old guitar, played a slow song, and the room fell silent.",
    "A good recipe lists the ingredients first and the steps in the order you do them.",
    "Clouds gather over the lake in the afternoon and rain falls before dark.",
    "The engineer measured the bridge twice before she signed the report.",
]


def train_tokenizer(folder: Path, vocab_size: int = 400):
    """A byte-level BPE (specials ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` at ids 0-2),
    saved as a transformers tokenizer folder with EOS and padding ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=256,
                                        clean_up_tokenization_spaces=False,
                                        model_input_names=["input_ids", "attention_mask"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 4, tie: bool = True, scale: float = 8.0):
    """A tiny Llama (hidden 64, 4 heads, 2 KV heads) with random weights from ``seed``, its matrices
    multiplied by ``scale``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         rms_norm_eps=1e-5, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    # Random init gives near-uniform logits; larger weights make greedy decoding decisive.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(scale)
    return model


def tiny_llama_folder(folder: Path, seed: int = 0, layers: int = 4, scale: float = 8.0) -> Path:
    """A saved tiny Llama + tokenizer (a torch artifact folder)."""
    tokenizer = train_tokenizer(folder)
    model = tiny_llama(len(tokenizer), seed=seed, layers=layers, scale=scale)
    model.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    return Path(folder)


def _permute(weight: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's q/k row order (its converter's ``LlamaModel.permute``)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(model, tokenizer, path: Path, qtype: str = "F32", pre: str = "smollm") -> Path:
    """Write ``model`` (a Llama) and its byte-level BPE ``tokenizer`` as a GGUF file.

    ``qtype`` ``F32`` stores the weights exactly; ``Q4_1``/``Q8_0`` quantize the 2-D weights with
    gguf's own reference quantizer, as llama.cpp's ``llama-quantize`` would.
    """
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    import json

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    for name, tensor in _gguf_tensors(model):
        data = tensor.detach().float().numpy()
        if qtype != "F32" and data.ndim == 2:
            kind = getattr(gguf.GGMLQuantizationType, qtype)
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _gguf_tensors(model):
    cfg = model.config
    state = model.state_dict()
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute(state[p + "self_attn.q_proj.weight"].numpy(), cfg.num_attention_heads, cfg.num_attention_heads)
        k = _permute(state[p + "self_attn.k_proj.weight"].numpy(), cfg.num_attention_heads, cfg.num_key_value_heads)
        yield f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"]
        yield f"blk.{i}.attn_q.weight", torch.from_numpy(q)
        yield f"blk.{i}.attn_k.weight", torch.from_numpy(k)
        yield f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"]
        yield f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        yield "output.weight", state["lm_head.weight"]
