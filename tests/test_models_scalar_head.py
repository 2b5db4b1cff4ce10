"""The scalar head reads the score at the last real token (decoders) or [CLS] (encoders), whatever the
padding side and whether pad_token_id is set."""

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from aha.models.scalar_head import (
    freeze_lower_layers,
    linear_head,
    load_scalar_model,
    pooling_of,
    right_align,
    sequence_scores,
    set_pooling,
)
from aha.models.tiny import TinyModelSpec, create_tiny_model

# Padding changes only which masked positions exist; float32 attention sums the same real terms in a
# possibly different order: differences are a few ulps of O(1) activations (measured ~1e-7), 1e-5 is safe.
TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = create_tiny_model(
        tmp_path_factory.mktemp("llama"), TinyModelSpec(hidden_size=32, num_layers=2, intermediate_size=64)
    )
    model = load_scalar_model(str(path))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head that is far from zero, so scores differ
    return model.eval()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("bert")
    BertForSequenceClassification(config).save_pretrained(path)
    return load_scalar_model(str(path)).eval()


ROWS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def padded(rows, pad, side):
    width = max(map(len, rows))
    ids, mask = [], []
    for r in rows:
        fill = width - len(r)
        ids.append([pad] * fill + r if side == "left" else r + [pad] * fill)
        mask.append([0] * fill + [1] * len(r) if side == "left" else [1] * len(r) + [0] * fill)
    return torch.tensor(ids), torch.tensor(mask)


@torch.no_grad()
def one_by_one(model, rows):
    return torch.cat(
        [sequence_scores(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows]
    )


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad", [0, 2])  # 2 is the tiny tokenizer's EOS: pad == EOS, the TRL pitfall
def test_padding_side_and_pad_id_do_not_change_scores(request, name, side, pad):
    model = request.getfixturevalue(name)
    alone = one_by_one(model, ROWS)
    assert alone.std() > 1e-3  # the rows really score differently, so a mix-up would show
    with torch.no_grad():
        scores = sequence_scores(model, *padded(ROWS, pad, side))
    torch.testing.assert_close(scores, alone, atol=TOL, rtol=0)


def test_decoder_without_pad_token_id(tiny_llama):
    # HF's own pooling cannot batch without config.pad_token_id; ours uses the attention mask only
    saved = tiny_llama.config.pad_token_id
    tiny_llama.config.pad_token_id = None
    try:
        with torch.no_grad():
            scores = sequence_scores(tiny_llama, *padded(ROWS, 7, "right"))
    finally:
        tiny_llama.config.pad_token_id = saved
    torch.testing.assert_close(scores, one_by_one(tiny_llama, ROWS), atol=TOL, rtol=0)


def test_hf_pooling_reads_a_pad_token_when_pad_is_eos(tiny_llama):
    """The pitfall itself: a real EOS at the end of a right-padded row, with pad == EOS, makes HF's
    pooling read the wrong position; ours does not."""
    rows = [[5, 6, 2], [10, 11, 12, 13, 14]]  # row 0 ends in EOS (id 2)
    ids, mask = padded(rows, 2, "right")
    saved = tiny_llama.config.pad_token_id
    tiny_llama.config.pad_token_id = 2
    try:
        with torch.no_grad():
            hf = tiny_llama(input_ids=ids, attention_mask=mask).logits[:, 0]
            ours = sequence_scores(tiny_llama, ids, mask)
    finally:
        tiny_llama.config.pad_token_id = saved
    truth = one_by_one(tiny_llama, rows)
    torch.testing.assert_close(ours, truth, atol=TOL, rtol=0)
    assert abs(float(hf[0] - truth[0])) > 1e-3


def test_right_align_and_empty_row():
    ids, mask = right_align(torch.tensor([[0, 0, 3, 4]]), torch.tensor([[0, 0, 1, 1]]))
    assert ids.tolist() == [[3, 4, 0, 0]] and mask.tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match="no real token"):
        sequence_scores(None, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_pooling_is_the_masked_mean_through_the_head(request, name, side):
    model = request.getfixturevalue(name)
    set_pooling(model, "mean")
    try:
        with torch.no_grad():
            scores = sequence_scores(model, *padded(ROWS, 0, side))
            # by hand, one row at a time (no padding at all): mean over its tokens, then the head
            head = model.score if name == "tiny_llama" else model.classifier
            expected = torch.stack(
                [
                    head(model.base_model(input_ids=torch.tensor([r])).last_hidden_state[0].mean(0))[0]
                    for r in ROWS
                ]
            )
    finally:
        set_pooling(model, "auto")
    assert expected.std() > 1e-3
    torch.testing.assert_close(scores, expected, atol=TOL, rtol=0)
    with torch.no_grad():  # and "auto" is back to the token readout, which differs
        assert (sequence_scores(model, *padded(ROWS, 0, side)) - scores).abs().max() > 1e-4


def test_pooling_travels_with_the_saved_model(tmp_path, tiny_bert):
    set_pooling(tiny_bert, "mean")
    try:
        tiny_bert.save_pretrained(tmp_path)
    finally:
        set_pooling(tiny_bert, "auto")
    assert pooling_of(load_scalar_model(str(tmp_path))) == "mean"
    with pytest.raises(ValueError, match="pooling"):
        set_pooling(tiny_bert, "max")


def test_freeze_lower_layers(tiny_llama, tiny_bert):
    for original in (tiny_llama, tiny_bert):
        model = copy.deepcopy(original)
        blocks = model.model.layers if original is tiny_llama else model.bert.encoder.layer
        freeze_lower_layers(model, 1)
        assert not any(p.requires_grad for p in model.get_input_embeddings().parameters())
        assert not any(p.requires_grad for p in blocks[0].parameters())
        assert all(p.requires_grad for p in blocks[1].parameters())
        assert all(p.requires_grad for p in linear_head(model).parameters())
        with pytest.raises(ValueError, match="cannot freeze 3"):
            freeze_lower_layers(model, 3)
    bert = copy.deepcopy(tiny_bert)
    freeze_lower_layers(bert, 1)  # the position/type embeddings freeze with the word embeddings
    assert not any(p.requires_grad for p in bert.bert.embeddings.parameters())
    freeze_lower_layers(bert, 2)  # every block: the whole base model (pooler too), only the head trains
    assert {n for n, p in bert.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }
    llama = copy.deepcopy(tiny_llama)
    freeze_lower_layers(llama, -1)  # -1: every block, whatever the depth
    assert {n for n, p in llama.named_parameters() if p.requires_grad} == {"score.weight"}
