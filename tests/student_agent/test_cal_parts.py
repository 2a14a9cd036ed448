"""CAL building blocks: config validation, forms, loss terms, and versioned checkpoints."""

import json

import pytest
import torch

from student_agent.agent import load_reader
from student_agent.cal import losses
from student_agent.cal.checkpoint import CheckpointStore
from student_agent.cal.config import CALConfig, CALSpec, build_cal
from student_agent.cal.fit import FITTERS, ConceptReader, FitConfig, mapped_view
from student_agent.cal.layers import FormArgs, SlotCAL, build_form, freeze


@pytest.mark.parametrize(
    "bad",
    [
        {"form": "nope"},
        {"direction": "sideways"},
        {"hidden": 0},
        {"rank": 0},
        {"dropout": 1.0},
        {"neighbours": (0,)},
        {"neighbours": (1, 1)},
        {"neighbours": (9,)},
    ],
)
def test_the_spec_refuses_bad_values_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CALSpec(**bad)


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"score_weight": -1.0}, "score_weight"),
        ({"score_weight": float("nan")}, "score_weight"),
        ({"unlabelled_slots": 0}, "unlabelled_slots"),
        ({"anchor_rows": 0}, "anchor_rows"),
        ({"anchor_batch": 0}, "batch sizes"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_the_fit_config_refuses_bad_values_naming_them(bad, says):
    with pytest.raises(ValueError, match=says):
        FitConfig(**bad)


def test_the_defaults_are_valid_and_widths_come_at_fit_time():
    spec = CALSpec()  # every default of the user's choices validates on its own
    with pytest.raises(ValueError, match="in_dim"):
        CALConfig(0, 4, spec)
    assert set(FITTERS) == {"student_to_teacher", "teacher_to_student"}  # every direction has a fitter


@pytest.mark.parametrize("form", ["mlp_skip", "lowrank"])
def test_forms_map_shapes_and_round_trip_config(form):
    cfg = CALConfig(12, 5, CALSpec(form=form, hidden=16, rank=3))
    assert CALConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert build_cal(cfg)(torch.randn(7, 12)).shape == (7, 5)


def test_a_store_written_with_the_flat_config_layout_still_loads(tmp_path):
    """Checkpoint stores written before the spec was split out keep form, sizes and widths in one dict."""
    torch.manual_seed(0)
    config = CALConfig(6, 8, CALSpec(hidden=8, dropout=0.0, neighbours=()))  # stores then had none
    reader = ConceptReader(config, 6, 2, 4, 3).eval()
    flat = {
        "form": "mlp_skip",
        "direction": "student_to_teacher",
        "in_dim": 6,
        "out_dim": 8,
        "hidden": 8,
        "rank": 32,
        "dropout": 0.0,
    }
    assert CALConfig.from_dict(flat) == config
    store = CheckpointStore(tmp_path / "cal")
    entry = {"packet_id": "c" * 64, "cal": flat, "shape": {"d_student": 6, "n_layers_t": 2, "d_t": 4, "k": 3}}
    store.activate(store.stage(entry, reader.state_dict()))
    loaded = load_reader(store, store.index()["entries"][0])
    x = torch.randn(5, 6)
    assert loaded.cal_config == config and torch.equal(loaded(x), reader(x))


def test_a_spec_written_before_neighbours_reads_as_none():
    stored = CALConfig(12, 5, CALSpec(hidden=16)).to_dict()
    del stored["spec"]["neighbours"]
    assert CALConfig.from_dict(stored).spec.neighbours == ()


def test_a_word_slot_sees_its_neighbours_and_nothing_past_the_words():
    x = torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1).expand(2, 4, 1)  # slot i holds i + 1
    cal = SlotCAL(torch.nn.Identity(), slots=4, d_in=1, neighbours=(-1, 1))
    out = cal(x)[0, :, :]  # [S, 4]: own (+ offset 0), read-out half, slot i-1, slot i+1
    assert out.tolist() == [
        [1.0, 1.0, 0.0, 0.0],  # the read-out slot: its own state twice, no neighbours
        [2.0, 0.0, 0.0, 3.0],  # the first word: slot 0 is not a word, so no left neighbour
        [3.0, 0.0, 2.0, 4.0],
        [4.0, 0.0, 3.0, 0.0],  # the last word: nothing to its right
    ]
    picked = cal(x, slots=torch.tensor([2]))[0]  # only slot 2: the same row
    assert picked.tolist() == [[3.0, 0.0, 2.0, 4.0]]


def test_lowrank_form_has_the_rank_it_claims():
    cal = build_cal(CALConfig(20, 20, CALSpec(form="lowrank", rank=3)))
    jacobian = cal.up.weight @ cal.down.weight  # [20, 20]
    assert torch.linalg.matrix_rank(jacobian) == 3


def test_freeze_stops_gradients():
    model = freeze(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5)))
    assert not model.training and all(not p.requires_grad for p in model.parameters())


def test_losses_are_zero_at_the_target_and_positive_away():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert losses.geometric_loss(x, x) == 0 and losses.geometric_loss(x, y) > 0
    assert losses.relational_loss(x, 3 * x) < 1e-6 and losses.relational_loss(x, y) > 0.1
    w, b = torch.randn(4, 8, generator=g), torch.zeros(4)
    own = (x @ w.T).argmax(-1)
    assert losses.reasoning_loss(10 * x, w, b, own) < losses.reasoning_loss(10 * x, w, b, (own + 1) % 4)
    unsafe = torch.randn(2, 8, generator=g)
    u = torch.nn.functional.normalize(unsafe[:1], dim=-1)  # [1, 8]
    orth = x - (x @ u.T) @ u  # x without its component along the first unsafe direction
    assert losses.safety_loss(x, unsafe) > 0 and losses.safety_loss(x, torch.zeros(0, 8)) == 0
    assert losses.safety_loss(orth, unsafe[:1]) < 1e-10


def test_score_margin_asks_for_the_teachers_side_with_up_to_one_spread_of_room():
    target = torch.tensor([[3.0, -0.5, 0.2, -2.0]])
    past = torch.tensor([[1.0, -0.5, 5.0, -9.0]])  # each at or beyond min(|t|, 1) on the teacher's side
    assert losses.score_margin_loss(past, target) == 0
    assert losses.score_margin_loss(torch.tensor([[-3.0]]), torch.tensor([[0.0]])) == 0  # no side to take
    wrong_side = -past
    short = torch.tensor([[0.5, -0.25, 0.1, -0.5]])  # right side, inside the margin
    assert losses.score_margin_loss(wrong_side, target) > losses.score_margin_loss(short, target) > 0
    # one concept on the wrong side costs more the further it is
    near, far = past.clone(), past.clone()
    near[0, 0], far[0, 0] = -0.5, -4.0
    assert losses.score_margin_loss(far, target) > losses.score_margin_loss(near, target) > 0


def test_losses_check_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        losses.geometric_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="shapes differ"):
        losses.score_margin_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="does not read"):
        losses.reasoning_loss(torch.zeros(3, 4), torch.zeros(2, 5), torch.zeros(2), torch.zeros(3, dtype=torch.long))


def test_composite_honours_zero_weights():
    terms = {"geo": torch.tensor(2.0), "reason": torch.tensor(3.0)}
    assert losses.composite(terms, {"geo": 1.0, "reason": 0.0}) == 2.0
    assert losses.composite(terms, {"geo": 0.5, "reason": 2.0}) == 7.0
    with pytest.raises(ValueError, match="switched off"):
        losses.composite(terms, {"geo": 0.0})
    with pytest.raises(ValueError, match="unknown"):
        losses.composite(terms, {"safety": 1.0})


def test_discarding_a_staged_version_leaves_the_store_byte_for_byte(tmp_path):
    store = CheckpointStore(tmp_path / "cal")
    torch.manual_seed(0)
    first = build_cal(CALConfig(6, 4, CALSpec(hidden=8, dropout=0.0)))
    v1 = store.stage({"packet_id": "a" * 64}, first.state_dict())
    store.activate(v1)
    before = store.files()
    v2 = store.stage({"packet_id": "b" * 64}, build_cal(CALConfig(6, 4, CALSpec(hidden=8, dropout=0.0))).state_dict())
    assert [e["packet_id"] for e in store.index(v2)["entries"]] == ["a" * 64, "b" * 64]
    assert store.files() != before
    store.discard(v2)  # the verifier said no
    assert store.current() == v1 and store.files() == before
    restored = build_cal(CALConfig(6, 4, CALSpec(hidden=8, dropout=0.0)))
    restored.load_state_dict(store.load_reader("a" * 64))
    x = torch.randn(5, 6)
    assert torch.equal(restored(x), first(x))
    with pytest.raises(ValueError, match="is current"):
        store.discard(v1)
    with pytest.raises(ValueError, match="no CAL checkpoint"):
        store.activate(99)


def test_sweep_drops_versions_staged_before_a_crash(tmp_path):
    store = CheckpointStore(tmp_path / "cal")
    v1 = store.stage({"packet_id": "a" * 64}, {"w": torch.ones(2)})
    store.activate(v1)
    before = store.files()
    store.stage({"packet_id": "b" * 64}, {"w": torch.zeros(2)})  # crashed before the decision
    (store.root / "current.tmp").write_text("junk")
    store.sweep()
    assert store.files() == before and store.versions() == [v1]


def test_a_packet_for_another_task_is_rejected_before_fitting():
    from types import SimpleNamespace

    from m2kt.ml.tasks import get_task
    from student_agent.verify import Rejection, check_task

    p23, p47 = get_task("modarith", p=23).spec(), get_task("modarith", p=47).spec()
    check_task(SimpleNamespace(task_spec=p23), p23)  # same task: fine
    for other in (p47, get_task("boolean").spec()):
        with pytest.raises(Rejection) as exc:
            check_task(SimpleNamespace(task_spec=other), p23)
        assert exc.value.reason == "task-mismatch"


@pytest.mark.parametrize("form", ["mlp_skip", "lowrank"])
@pytest.mark.parametrize("neighbours", [(), (-1, 1)])
def test_word_slots_skip_their_zero_half_and_map_as_the_whole_input_would(form, neighbours, monkeypatch):
    """A form that takes ``inputs=`` maps word slots without their read-out half (all zeros there):
    the same outputs as the full input, for whole views, picked slots and picked columns."""
    d = 6
    inner = build_form(form, FormArgs((2 + len(neighbours)) * d, 10, 16, 4, 0.3)).eval()
    cal = SlotCAL(inner, slots=5, d_in=d, neighbours=neighbours)
    torch.nn.init.normal_(cal.slot_offset, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 5, d, generator=torch.Generator().manual_seed(2))
    slots, cols = torch.tensor([3, 0, 2]), torch.tensor([1, 3, 7])
    fast, fast_picked = cal(x), cal(x, columns=cols, slots=slots)
    monkeypatch.setattr(type(inner), "takes_inputs", False)
    full = cal(x)
    assert torch.allclose(fast, full, atol=1e-6)
    assert torch.allclose(fast_picked, full[:, slots][..., cols], atol=1e-6)


def test_a_view_mapped_at_some_blocks_equals_the_whole_map_there_and_is_zero_elsewhere():
    """The program term maps only the teacher blocks its concepts and heads read."""
    views = {"words": 3, "token_classes": 5, "step_classes": [4], "step_layers": [1], "answer_classes": 3}
    views |= {"answer_layer": 2, "token_layer": 0, "feature_dim": 7}
    n_layers_t, d_t, d_s = 3, 4, 6
    torch.manual_seed(0)
    reader = ConceptReader(CALConfig(2 * d_s, n_layers_t * d_t, CALSpec(hidden=8)), d_s, n_layers_t, d_t, 2, views)
    reader.eval()
    torch.nn.init.normal_(reader.teacher_norm.mean)
    x = torch.randn(5, 4, d_s)
    whole = reader.teacher_norm.inverse(reader.cal(x)).view(5, 4, n_layers_t, d_t)
    part = mapped_view(reader, x, [0, 2])
    assert torch.allclose(part[:, :, [0, 2]], whole[:, :, [0, 2]], atol=1e-6)
    assert part[:, :, 1].abs().sum() == 0
    assert torch.allclose(mapped_view(reader, x, [0, 1, 2]), whole)
