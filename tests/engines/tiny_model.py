"""A tiny random-weight Llama and a byte-level BPE tokenizer, built in code (nothing downloads).

    path = build_tiny_model(tmp_path / "tiny")   # config, weights, tokenizer, chat template
    build_tiny_adapter(path, tmp_path / "lora")  # a LoRA adapter for it, non-zero weights
    token_bytes(tokenizer)                       # {id: raw bytes}, to check detokenization

The tokenizer is trained on a small corpus that mixes accented, CJK and emoji text,
with a vocabulary small enough that most multi-byte characters stay split across
byte tokens: a random model then emits split characters (and invalid bytes) all
the time, which is what the detokenizer tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
VOCAB_SIZE = 384
# Each turn is "<|role|>content\n". With tools, as Qwen 2.5's and Hermes' templates do:
# a system turn lists them as JSON inside <tools></tools> (after the conversation's
# own system message, if any) and says how to call one; an assistant turn writes its
# calls as <tool_call> JSON (arguments through tojson: an object, not a string); tool
# results go back in one user turn, each in <tool_response></tool_response>.
CHAT_TEMPLATE = r"""
{%- if messages[-1].role == 'assistant' %}
    {{- raise_exception('the last message must not be the assistant') }}
{%- endif %}
{%- set turns = messages %}
{%- if tools %}
    {{- '<|system|>' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
        {%- set turns = messages[1:] %}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and ' }}
    {{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n' }}
{%- endif %}
{%- for m in turns %}
    {%- if m.role == 'tool' %}
        {%- if loop.first or turns[loop.index0 - 1].role != 'tool' %}
            {{- '<|user|>' }}
        {%- else %}
            {{- '\n' }}
        {%- endif %}
        {{- '<tool_response>\n' + m.content + '\n</tool_response>' }}
        {%- if loop.last or turns[loop.index0 + 1].role != 'tool' %}
            {{- '\n' }}
        {%- endif %}
    {%- elif m.role == 'assistant' and m.tool_calls %}
        {{- '<|assistant|>' + m.content }}
        {%- for call in m.tool_calls %}
            {%- if call.function is defined %}
                {%- set call = call.function %}
            {%- endif %}
            {%- if m.content or not loop.first %}
                {{- '\n' }}
            {%- endif %}
            {{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
            {{- call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '\n' }}
    {%- else %}
        {{- '<|' + m.role + '|>' + m.content + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- endif %}
"""

_CORPUS = (
    "the quick brown fox jumps over the lazy dog. ",
    "a river runs through the old town, and the bridge is made of stone. ",
    "café naïve über jalapeño façade déjà vu crème brûlée. ",
    "日本語のテキスト 東京 大阪 你好 世界 한국어 안녕하세요. ",
    "rockets 🚀 and parties 🎉 and hearts ❤️ and flags 🇯🇵. ",
    "Ωmega € £ ¥ — “quotes” and «more»… ",
    "def main():\n    return 42\n",
)


def build_tiny_model(path: Path) -> Path:
    """Write a tiny Llama (2 layers, hidden 32) and its tokenizer to ``path``; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([line * 4 for line in _CORPUS], trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.3,
        bos_token_id=bos_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_adapter(model_dir: Path, path: Path, seed: int = 1, **lora: Any) -> Path:
    """Write a LoRA adapter for the tiny model at ``model_dir`` to ``path`` (PEFT's
    ``save_pretrained`` layout); return it.

    Its weights are random and non-zero (``init_lora_weights=False``: PEFT's default
    starts B at zero, an adapter that changes nothing), so its output differs from
    the base model's. ``lora`` overrides ``LoraConfig`` fields.
    """
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    fields: dict[str, Any] = {
        "r": 4,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"],
        "init_lora_weights": False,
        "task_type": "CAUSAL_LM",
    }
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft 0.21 on transformers 5: a deprecated property
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, LoraConfig(**(fields | lora)))
    peft_model.save_pretrained(str(path))
    return path


def token_bytes(tokenizer: Any) -> dict[int, bytes]:
    """The raw bytes of every token of a byte-level tokenizer; b"" for special tokens."""
    # GPT-2's table of printable stand-ins for bytes, which ByteLevel uses.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    special = set(tokenizer.all_special_ids)
    return {
        i: b"" if i in special else bytes(table[ch] for ch in name)
        for name, i in tokenizer.get_vocab().items()
    }


if __name__ == "__main__":  # make tiny-model: a model directory to serve by hand
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "models/tiny-llama")
    print(build_tiny_model(target))
