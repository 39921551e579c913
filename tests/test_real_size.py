"""The real-size random policy builder: configs match the Qwen2.5-VL releases (checked without building weights)."""

import pytest

from veason_r1.models.real_size import real_size_config


@pytest.mark.parametrize("size,hidden,layers,heads,kv,vocab", [("3b", 2048, 36, 16, 2, 151936),
                                                                 ("7b", 3584, 28, 28, 4, 152064)])
def test_real_size_configs_match_the_releases(size, hidden, layers, heads, kv, vocab):
    config, processor = real_size_config(size)
    t = config.text_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (hidden, layers,
                                                                                                 heads, kv)
    assert t.vocab_size == vocab and config.vision_config.depth == 32 and config.vision_config.hidden_size == 1280
    assert config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    # the project tokenizer's special ids fall inside the real vocabulary
    assert max(processor.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|im_end|>"])) < vocab


def test_real_size_config_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="unknown size '1b'"):
        real_size_config("1b")
