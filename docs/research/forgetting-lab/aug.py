import torch
import zkapex_flwr.tasks as T
import torch.nn.functional as F
def shift_batch(x, pad=2):
    n, c, h, w = x.shape
    xp = F.pad(x, (pad,)*4)
    i = torch.randint(0, 2*pad+1, (n,)); j = torch.randint(0, 2*pad+1, (n,))
    rows = (torch.arange(h)[None] + i[:, None]); cols = (torch.arange(w)[None] + j[:, None])
    return xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
orig = T.ImageTask.forward
def fwd(self, model, batch):
    x = batch[0]
    if type(model).__name__ == "_Functional": return model(x)
    if model.training and x.shape[-1] > 8: x = shift_batch(x)
    elif model.training: x = shift_batch(x, 1)
    return model(x)
T.ImageTask.forward = fwd
