import sys, time, torch, functools
from torch import nn
from zkapex_flwr.pipeline import preset, build_splits
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model, _unfuse_attention
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import HybridEmbed
torch.set_num_threads(1)
import sys; sys.path.insert(0, "/tmp/lab")
if "aug" in sys.argv: import aug; sys.argv.remove("aug")
ds, ge, pe, ed, shift, glr, ch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6]), int(sys.argv[7])
cfg = preset("vit", ds, seed=0, client_id=0, domain_shift=shift, client_keeps_forget=False, global_epochs=ge, personal_epochs=pe, global_lr=glr)
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task)
c, h, w = margs["image_shape"]
def stem():
    s = 2 if h > 8 else 1
    m = nn.Sequential(nn.Conv2d(c, ch, 3, s, 1), nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, ch, 3, s, 1), nn.BatchNorm2d(ch), nn.ReLU()); m.num_features = ch; return m
torch.manual_seed(0)
feat = h // 4 if h > 8 else h
psz = 1 if h > 8 else 2
model = VisionTransformer(img_size=h, patch_size=psz, in_chans=c, num_classes=10, embed_dim=ed, depth=4, num_heads=4, mlp_ratio=2.0,
     embed_layer=functools.partial(HybridEmbed, backbone=stem(), feature_size=feat, feature_ratio=None) if True else None)
model = _unfuse_attention(model)
t=time.time(); g = train(model, task, sp.provider_train, epochs=ge, lr=glr, seed=0); tg=time.time()-t
t=time.time(); p = train(clone_model(g), task, sp.client_train, epochs=pe, lr=cfg.personal_lr, seed=0); tp=time.time()-t
print(sys.argv[1:], f"global {tg:.0f}s pers {tp:.0f}s; g train {accuracy(g,task,sp.provider_train):.3f} g clienttest {accuracy(g,task,sp.client_test):.3f}; p test {accuracy(p,task,sp.client_test):.3f} p forget {accuracy(p,task,sp.client_forget):.3f}", flush=True)
