"""The one trainer (gradmatch.train) against torch.optim.SGD written out plainly, in float64.

Every form it runs in is checked against the same oracle: one network or a stack of several, one
member after another or vmapped together (``stacked``), eager or as the fixed-storage epoch a GPU
captures (``capture``: on a CPU it runs that epoch eagerly, the twin of the GPU's default path); with
members stopped (masked), with their own sets or one shared set, with augmentation, with the
evaluation's learning-rate drop; and the in-place re-initialisation a captured graph relies on.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradmatch.augment import make_augment
from gradmatch.evaluate import lr_factor
from gradmatch.models import create_model
from gradmatch.models.stack import Networks
from gradmatch.train import Trainer, fit

K = 3


def tiny_set(shape=(1, 8, 8), ipc=4, seed=0, members=None):
    g = torch.Generator().manual_seed(seed)
    lead = (members,) if members else ()
    images = torch.randn(*lead, K * ipc, *shape, generator=g)
    return images, torch.arange(K).repeat_interleave(ipc)


def oracle(net, images, labels, batch, gen, lr, momentum, wd, epochs, *, lr_at=None, restart_at=(), augment=None,
           active=None):
    """DC's epoch('train'): torch.optim.SGD over shuffled mini-batches, written out plainly."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    for epoch in range(epochs):
        if active is not None and not active[epoch]:
            continue
        if epoch in restart_at:
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch)
        net.train()
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch):
            idx = order[start:start + batch]
            x = images[idx] if augment is None else augment(images[idx])
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def assert_same_networks(nets, references, rtol=1e-12, atol=1e-13):
    for member, ref in zip(nets.members, references):
        for (name, p), q in zip(ref.named_parameters(), member.parameters()):
            torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=name)
        for b, c in zip(ref.buffers(), member.buffers()):  # batch-norm running statistics too
            torch.testing.assert_close(c, b, rtol=rtol, atol=atol)


def fresh(model, seeds, shape=(1, 8, 8)):
    nets = Networks.build(model, shape[0], K, shape[1:], seeds)
    refs = Networks.build(model, shape[0], K, shape[1:], seeds).members  # the same initialisation, apart
    return nets, refs


@pytest.mark.parametrize("capture", [False, True])
@pytest.mark.parametrize("model,weight_decay,batch", [("ConvNet", 0.0, 64), ("ConvNetBN", 5e-4, 5), ("MLP", 5e-4, 5)])
def test_one_network_trains_as_torch_sgd(float64, model, weight_decay, batch, capture):
    images, labels = tiny_set()
    nets, refs = fresh(model, [3])
    trainer = Trainer(nets, 0.05, 0.9, weight_decay, capture=capture)
    gens = [torch.Generator().manual_seed(1) for _ in range(2)]
    for epoch in range(6):
        if epoch == 2:  # the evaluation's drop: momentum kept
            trainer.set_lr(0.005)
        if epoch == 4:  # the inner loop's new optimiser: momentum zeroed
            trainer.restart(0.02)
        trainer.epoch(images, labels, batch, [gens[0]])
    lrs = {0: 0.05, 1: 0.05, 2: 0.005, 3: 0.005, 4: 0.02, 5: 0.02}
    oracle(refs[0], images, labels, batch, gens[1], 0.05, 0.9, weight_decay, 6, lr_at=lrs.get, restart_at=(4,))
    assert_same_networks(nets, refs)
    assert not torch.equal(nets.members[0].classifier.weight, Networks.build(model, 1, K, (8, 8), [3]).members[0]
                           .classifier.weight.double())  # it did train


@pytest.mark.parametrize("stacked,capture,shared", [(False, False, False), (True, False, False), (True, True, False),
                                                    (False, True, True), (True, False, True)])
def test_a_stack_trains_each_member_as_alone(float64, stacked, capture, shared):
    """Three networks with their own initialisation, shuffles and momentum, on their own sets (or one
    shared set); the second stops after epoch 2 (masked: untouched, nothing drawn), as alone."""
    images, labels = tiny_set() if shared else tiny_set(members=3)
    nets, refs = fresh("ConvNet", [10, 11, 12])
    trainer = Trainer(nets, 0.05, 0.5, 5e-4, stacked=stacked, capture=capture)
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    active_by_epoch = [[True, True, True], [True, True, True], [True, False, True], [True, False, True]]
    for active in active_by_epoch:
        trainer.epoch(images, labels, 5, gens, active=active)
    for k, ref in enumerate(refs):
        oracle(ref, images if shared else images[k], labels, 5, torch.Generator().manual_seed(k), 0.05, 0.5, 5e-4, 4,
               active=[a[k] for a in active_by_epoch])
    assert_same_networks(nets, refs, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(nets.members[0].classifier.weight, nets.members[2].classifier.weight)


def test_each_member_draws_its_own_augmentation():  # float32: the augmentation's dtype
    images, labels = tiny_set(shape=(1, 12, 12))
    nets, refs = fresh("ConvNetD1", [7, 8], shape=(1, 12, 12))
    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    trainer = Trainer(nets, 0.05, 0.9, stacked=True)
    fit(trainer, images, labels, 2, 5, gens, augments=[make_augment("crop_scale_rotate", g) for g in gens])
    for k, ref in enumerate(refs):
        gen = torch.Generator().manual_seed(k)
        oracle(ref, images, labels, 5, gen, 0.05, 0.9, 0.0, 2, augment=make_augment("crop_scale_rotate", gen))
    assert_same_networks(nets, refs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("epochs", [1, 5])
def test_fit_with_the_drop_is_the_seeds_evaluate_synset(float64, epochs):
    """The seed's evaluate_synset: SGD(momentum 0.9, weight decay 5e-4), MultiStepLR at epochs // 2
    (momentum kept), ``epochs`` shuffled passes."""
    images, labels = tiny_set(ipc=3)
    nets, refs = fresh("ConvNet", [11])
    trainer = Trainer(nets, 0.05 * lr_factor(0, epochs), 0.9, 5e-4)
    fit(trainer, images, labels, epochs, 4, [torch.Generator().manual_seed(2)],
        lr_at=lambda epoch: 0.05 * lr_factor(epoch, epochs))
    net, gen = refs[0], torch.Generator().manual_seed(2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), 4):
            idx = order[start:start + 4]
            loss = F.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    assert_same_networks(nets, refs)


def test_fit_stops_each_member_when_told(float64):
    images, labels = tiny_set()
    nets, _ = fresh("ConvNet", [1, 2])
    seen = []

    def stop(active):
        seen.append(list(active))
        return [len(seen) < 2, len(seen) < 3]

    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    fit(Trainer(nets, 0.05, 0.5), images, labels, 10, 5, gens, stop=stop)
    assert seen == [[True, True], [True, True], [False, True]]  # then neither goes on: no fourth epoch


def test_reinitialising_in_place_equals_fresh_networks(float64):
    """What a captured graph relies on (the GPU's default path), run here: the stack keeps its storage
    and holds exactly the networks a fresh build would make."""
    nets = Networks.build("ConvNetBN", 1, K, (8, 8), [5, 6])
    storage = {n: t.data_ptr() for n, t in {**nets.params, **nets.buffers}.items()}
    member_storage = [p.data_ptr() for p in nets.members[1].parameters()]
    images, labels = tiny_set()
    Trainer(nets, 0.1, 0.5).epoch(images, labels, 5, [torch.Generator().manual_seed(0)] * 2)
    nets.reset([8, 9])
    fresh_nets = Networks.build("ConvNetBN", 1, K, (8, 8), [8, 9])
    for name in nets.params:
        assert torch.equal(nets.params[name], fresh_nets.params[name]), name
    for name in nets.buffers:
        assert torch.equal(nets.buffers[name], fresh_nets.buffers[name]), name
    assert storage == {n: t.data_ptr() for n, t in {**nets.params, **nets.buffers}.items()}
    assert member_storage == [p.data_ptr() for p in nets.members[1].parameters()]
    torch.manual_seed(9)
    plain = create_model("ConvNetBN", 1, K, (8, 8))
    assert torch.equal(plain.classifier.weight, nets.members[1].classifier.weight)  # as create_model makes it
