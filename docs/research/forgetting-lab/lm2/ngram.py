import torch, collections
from zkapex_flwr.pipeline import preset, build_splits
for nprov in (1200, 6000):
    cfg = preset("opt", "stdlib-code", client_keeps_forget=False, num_clients=3, max_provider_seqs=nprov, max_client_seqs=500)
    sp, _ = build_splits(cfg)
    tr = sp.provider_train.tensors[0]; te = sp.client_test.tensors[0]
    V = int(max(tr.max(), te.max())) + 1
    uni = torch.bincount(tr[:, 1:].reshape(-1), minlength=V)
    top = uni.argmax()
    acc_uni = (te[:, 1:] == top).float().mean().item()
    big = torch.zeros(V, V)
    big.index_put_((tr[:, :-1].reshape(-1), tr[:, 1:].reshape(-1)), torch.ones(tr[:, 1:].numel()), accumulate=True)
    pred = big.argmax(1)
    acc_bi = (pred[te[:, :-1]] == te[:, 1:]).float().mean().item()
    print(nprov, f"unigram {acc_uni:.3f} bigram {acc_bi:.3f}", "tokens", tr.numel())
