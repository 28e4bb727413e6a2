"""A jaxgpt tokenizer as Hugging Face tokenizer files: `tokenizer.json` (the `tokenizers` library's
format, which AutoTokenizer / PreTrainedTokenizerFast, vLLM and TGI load) and `tokenizer_config.json`.

Each kind encodes ordinary text exactly as jaxgpt's tokenizer does (tests/test_export.py checks it):
  - gpt2, bpe (tiktoken encodings): a byte-level BPE. The vocabulary is tiktoken's ranks (id = rank)
    in GPT-2's byte-to-unicode spelling; the merges are recovered from the ranks as transformers'
    TikTokenConverter does (every split of a token into two tokens, ordered by the merged token's
    rank), with `ignore_merges` so a whole pre-token in the vocabulary is one id, as in tiktoken.
    The pre-tokenizer is the tokenizer's own split pattern (GPT-2's r50k, or the bpe kind's).
    `<|endoftext|>` is a special added token at eot_id.
  - char: one id per character (a WordLevel model over a per-character split) and a decoder that
    joins the characters. A character outside the vocabulary becomes the character a classifier
    reads it as (jaxgpt.finetune.classify.unknown_id: '?', else the first), where jaxgpt's encode refuses.

An instruction fine-tuned run (finetune.py --task=sft) also gets a `chat_template` (sft_chat_template):
a user message is the instruction, put into the run's prompt template; an assistant message is followed
by the end-of-response token. `tokenizer.apply_chat_template([{"role": "user", "content": "..."}])`
then gives exactly the prompt jaxgpt's `sample.py --instruction=...` feeds the model (no --input).

Differences left: the literal text `<|endoftext|>` is the special token in Hugging Face (GPT-2's own
tokenizer does the same), ordinary text in jaxgpt's encode.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

from jaxgpt.data.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer
from jaxgpt.finetune.classify import unknown_id
from jaxgpt.finetune.instruct import Template

__all__ = ["hf_tokenizer_files", "byte_level_vocab_and_merges", "sft_chat_template", "PAD_TOKEN", "TOKENIZER_JSON",
           "TOKENIZER_CONFIG_JSON"]

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
PAD_TOKEN = "<pad>"  # a classifier's padding when its tokenizer has no <|endoftext|> (char)


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the spelling of byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_vocab_and_merges(ranks: Dict[bytes, int]) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE equal to tiktoken's ranks: every split of a token into two
    tokens of the vocabulary, ordered by the merged token's rank (then by the halves' ranks)."""
    table = _bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], spell(left), spell(right)))
    merges.sort()
    return vocab, [(left, right) for *_, left, right in merges]


def _tiktoken_ranks(tokenizer: Tokenizer) -> Dict[bytes, int]:
    encoding = tokenizer.encoding
    return {token: encoding.encode_single_token(token) for token in encoding.token_byte_values()}


def _split_pattern(tokenizer: Tokenizer) -> str:
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.pattern
    return r50k_pat_str  # GPT2Tokenizer's encoding is built with it (jaxgpt.data.tokenizers.gpt2_encoding)


def _hf_tokenizers():
    """The `tokenizers` library (Hugging Face's; transformers installs it), or one line saying so."""
    try:
        import tokenizers  # optional: only an export needs it
    except ImportError:
        raise ValueError("writing Hugging Face tokenizer files needs the tokenizers library: pip install tokenizers "
                         "(transformers installs it)") from None
    return tokenizers


def _byte_level_tokenizer(tokenizer: Tokenizer):
    tokenizers = _hf_tokenizers()
    decoders, models, pre_tokenizers, processors = (tokenizers.decoders, tokenizers.models, tokenizers.pre_tokenizers,
                                                    tokenizers.processors)
    vocab, merges = byte_level_vocab_and_merges(_tiktoken_ranks(tokenizer))
    hf = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_split_pattern(tokenizer)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens([tokenizers.AddedToken(ENDOFTEXT, special=True, normalized=False)])
    if hf.token_to_id(ENDOFTEXT) != tokenizer.eot_id:
        raise ValueError(f"<|endoftext|> got id {hf.token_to_id(ENDOFTEXT)} in the Hugging Face tokenizer, "
                         f"{tokenizer.eot_id} in jaxgpt's")
    return hf


def _char_tokenizer(tokenizer: CharTokenizer):
    tokenizers = _hf_tokenizers()
    decoders, models, pre_tokenizers = tokenizers.decoders, tokenizers.models, tokenizers.pre_tokenizers
    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    hf = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=tokenizer.chars[unknown_id(tokenizer)]))
    # every character its own piece ([\s\S]: newlines too, which '.' would skip)
    hf.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated", invert=False)
    hf.decoder = decoders.Fuse()  # the pieces joined as they are (no spaces between)
    return hf


def _jinja_text(text: str) -> str:
    """`text` as a Jinja expression printing it verbatim: a JSON string literal (escapes, no raw newline
    for the chat template's trim_blocks/lstrip_blocks to eat)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def sft_chat_template(template: Template) -> str:
    """A Jinja chat template for an SFT run's prompt template (a user message is the instruction)."""
    marker = "\x00instruction\x00"
    before, after = template.prompt(marker).split(marker)
    return ("{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}" + _jinja_text(before) + "{{ message['content'] }}"
            + _jinja_text(after) + "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}{{ eos_token }}"
            "{%- endif -%}{%- endfor -%}")


def hf_tokenizer_files(tokenizer: Tokenizer, *, model_max_length: int, eos_id: Optional[int] = None,
                       pad_id: Optional[int] = None, truncation_side: str = "right",
                       chat_template: Optional[str] = None) -> Dict[str, str]:
    """{file name: text} of the Hugging Face tokenizer files for `tokenizer`.

    eos_id: the model's end-of-sequence id (None: <|endoftext|> where the tokenizer has it; a char
    tokenizer has none); pad_id: a classifier's padding id, which becomes `<pad>` when it is past the
    tokenizer's vocabulary; truncation_side: which end a text longer than model_max_length loses;
    chat_template: a Jinja chat template (sft_chat_template)."""
    if isinstance(tokenizer, CharTokenizer):
        hf = _char_tokenizer(tokenizer)
    elif isinstance(tokenizer, (GPT2Tokenizer, BPETokenizer)):
        hf = _byte_level_tokenizer(tokenizer)
    else:
        raise ValueError(f"the {tokenizer.name} tokenizer has no Hugging Face form")
    if pad_id is not None and pad_id >= tokenizer.vocab_size:
        if pad_id != tokenizer.vocab_size:
            raise ValueError(f"a padding id past the tokenizer's vocabulary must come right after it "
                             f"({tokenizer.vocab_size}), got {pad_id}")
        hf.add_special_tokens([_hf_tokenizers().AddedToken(PAD_TOKEN, special=True, normalized=False)])
    config: Dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                              "clean_up_tokenization_spaces": False, "padding_side": "right",
                              "truncation_side": truncation_side}
    if eos_id is None:
        eos_id = tokenizer.eot_id
    if tokenizer.eot_id is not None:
        config["bos_token"] = ENDOFTEXT
        config["add_prefix_space"] = False
    if eos_id is not None:
        config["eos_token"] = hf.id_to_token(eos_id)
    if pad_id is not None:
        config["pad_token"] = hf.id_to_token(pad_id)
    if chat_template is not None:
        config["chat_template"] = chat_template
    return {TOKENIZER_JSON: hf.to_str(), TOKENIZER_CONFIG_JSON: json.dumps(config, indent=2, ensure_ascii=False)}
