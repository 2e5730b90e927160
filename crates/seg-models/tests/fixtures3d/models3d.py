"""Reference definitions of the four segmentation networks in 3D, in PyTorch.

Derived from shared/reference/models.py (the 2D specification): the same four
classes with the same constructor arguments, the same module structure and so
the same `state_dict()` names, with every 2D layer replaced by its 3D
counterpart:

    Conv2d            -> Conv3d (same kernel sizes, padding k//2; the
                         SpatialAttention 7x7 conv becomes Conv3d(2, 1, 7, padding=3))
    BatchNorm2d       -> BatchNorm3d
    MaxPool2d(2)      -> MaxPool3d(2)
    ConvTranspose2d   -> ConvTranspose3d(kernel_size=2, stride=2)
    Upsample bilinear -> Upsample trilinear, scale 2, align_corners=True
    Upsample nearest  -> Upsample nearest (3D), scale 2

This file is a specification, not part of the product. It pins down what the
Rust networks built with `dims = 3` must compute; the fixtures beside it were
produced from these classes by make_fixtures_3d.py.

Conventions shared by all four networks
- Input NCDHW float32, output raw logits NCDHW (no sigmoid/softmax inside).
- Any input depth/height/width is accepted: max-pooling floors odd sizes, and
  before every skip concatenation the upsampled tensor is zero-padded to the
  skip's size, front/top/left getting diff//2 and back/bottom/right the rest.
- BatchNorm3d everywhere uses eps=1e-5, momentum=0.1 (running_var is updated
  with the unbiased batch variance, normalisation uses the biased one).
- `base` is the width of the first level; level k has base * 2**k channels.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to(x, ref):
    """Zero-pad x (N,C,d,h,w) to ref's spatial size, split diff//2 | rest."""
    dz = ref.size(2) - x.size(2)
    dy = ref.size(3) - x.size(3)
    dx = ref.size(4) - x.size(4)
    return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2, dz // 2, dz - dz // 2])


# --------------------------------------------------------------------------
# UNet: the classic network, with the state_dict names used by the widely
# used milesial/Pytorch-UNet repository.
# --------------------------------------------------------------------------
class DoubleConv(nn.Module):
    def __init__(self, cin, cout, mid=None):
        super().__init__()
        mid = mid or cout
        self.double_conv = nn.Sequential(
            nn.Conv3d(cin, mid, 3, padding=1, bias=False),  # .0
            nn.BatchNorm3d(mid),                            # .1
            nn.ReLU(inplace=True),                          # .2
            nn.Conv3d(mid, cout, 3, padding=1, bias=False), # .3
            nn.BatchNorm3d(cout),                           # .4
            nn.ReLU(inplace=True),                          # .5
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool3d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, cin, cout, bilinear):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)
            self.conv = DoubleConv(cin, cout, cin // 2)
        else:
            self.up = nn.ConvTranspose3d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        x = pad_to(self.up(x), skip)
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, in_channels=3, out_channels=1, base=64, bilinear=False):
        super().__init__()
        b, f = base, (2 if bilinear else 1)
        self.inc = DoubleConv(in_channels, b)
        self.down1 = Down(b, 2 * b)
        self.down2 = Down(2 * b, 4 * b)
        self.down3 = Down(4 * b, 8 * b)
        self.down4 = Down(8 * b, 16 * b // f)
        self.up1 = Up(16 * b, 8 * b // f, bilinear)
        self.up2 = Up(8 * b, 4 * b // f, bilinear)
        self.up3 = Up(4 * b, 2 * b // f, bilinear)
        self.up4 = Up(2 * b, b, bilinear)
        self.outc = OutConv(b, out_channels)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


# --------------------------------------------------------------------------
# ResUNet: residual blocks in every stage and a spatial attention map on each
# decoder concatenation (CBAM-style: conv over [mean, max] across channels).
# --------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut = nn.Sequential()
        if cin != cout:
            self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1), nn.BatchNorm3d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x):
        avg = torch.mean(x, dim=1, keepdim=True)
        mx, _ = torch.max(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))


class ResUNet(nn.Module):
    def __init__(self, in_channels=1, out_channels=1, base=64):
        super().__init__()
        b = base
        self.encoder1 = ResidualBlock(in_channels, b)
        self.encoder2 = ResidualBlock(b, 2 * b)
        self.encoder3 = ResidualBlock(2 * b, 4 * b)
        self.encoder4 = ResidualBlock(4 * b, 8 * b)
        self.encoder5 = ResidualBlock(8 * b, 16 * b)
        self.pool = nn.MaxPool3d(2)
        for lvl, w in ((4, 8 * b), (3, 4 * b), (2, 2 * b), (1, b)):
            setattr(self, f"upconv{lvl}", nn.ConvTranspose3d(2 * w, w, 2, stride=2))
            setattr(self, f"sam{lvl}", SpatialAttention(7))
            setattr(self, f"decoder{lvl}", ResidualBlock(2 * w, w))
        self.final = nn.Conv3d(b, out_channels, 1)

    def forward(self, x):
        e1 = self.encoder1(x)
        e2 = self.encoder2(self.pool(e1))
        e3 = self.encoder3(self.pool(e2))
        e4 = self.encoder4(self.pool(e3))
        d = self.encoder5(self.pool(e4))
        for lvl, skip in ((4, e4), (3, e3), (2, e2), (1, e1)):
            up = pad_to(getattr(self, f"upconv{lvl}")(d), skip)
            cat = torch.cat([up, skip], dim=1)
            cat = cat * getattr(self, f"sam{lvl}")(cat)
            d = getattr(self, f"decoder{lvl}")(cat)
        return self.final(d)


# --------------------------------------------------------------------------
# Attention U-Net (Oktay et al., 2018): additive attention gates filter each
# skip connection with the gating signal coming up from the decoder.
# --------------------------------------------------------------------------
class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.conv(x)


class UpConv(nn.Module):
    """Nearest-neighbour x2 upsampling, then conv3x3x3 + BN + ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.up(x)


class AttentionGate(nn.Module):
    def __init__(self, f_g, f_l, f_int):
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv3d(f_g, f_int, 1), nn.BatchNorm3d(f_int))
        self.W_x = nn.Sequential(nn.Conv3d(f_l, f_int, 1), nn.BatchNorm3d(f_int))
        self.psi = nn.Sequential(nn.Conv3d(f_int, 1, 1), nn.BatchNorm3d(1), nn.Sigmoid())

    def forward(self, g, x):
        a = F.relu(self.W_g(g) + self.W_x(x))
        return x * self.psi(a)


class AttentionUNet(nn.Module):
    def __init__(self, in_channels=3, out_channels=1, base=64):
        super().__init__()
        b = base
        self.enc1 = ConvBlock(in_channels, b)
        self.enc2 = ConvBlock(b, 2 * b)
        self.enc3 = ConvBlock(2 * b, 4 * b)
        self.enc4 = ConvBlock(4 * b, 8 * b)
        self.enc5 = ConvBlock(8 * b, 16 * b)
        self.pool = nn.MaxPool3d(2)
        for lvl, w in ((4, 8 * b), (3, 4 * b), (2, 2 * b), (1, b)):
            setattr(self, f"up{lvl}", UpConv(2 * w, w))
            setattr(self, f"att{lvl}", AttentionGate(w, w, w // 2))
            setattr(self, f"dec{lvl}", ConvBlock(2 * w, w))
        self.head = nn.Conv3d(b, out_channels, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        d = self.enc5(self.pool(e4))
        for lvl, skip in ((4, e4), (3, e3), (2, e2), (1, e1)):
            g = pad_to(getattr(self, f"up{lvl}")(d), skip)
            s = getattr(self, f"att{lvl}")(g, skip)
            d = getattr(self, f"dec{lvl}")(torch.cat([s, g], dim=1))
        return self.head(d)


# --------------------------------------------------------------------------
# UNet++ (Zhou et al., 2018): nested dense skip pathways; node X(i,j) sees all
# X(i,0..j-1) plus the upsampled X(i+1,j-1). With deep supervision the four
# heads on X(0,1..4) are all returned (stacked on a new leading axis, shape
# (4,N,C,D,H,W)) in training; inference uses their mean.
# --------------------------------------------------------------------------
class VGGBlock(nn.Module):
    def __init__(self, cin, mid, cout):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, mid, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class UNetPlusPlus(nn.Module):
    def __init__(self, in_channels=3, out_channels=1, base=32, deep_supervision=False):
        super().__init__()
        w = [base * 2 ** k for k in range(5)]
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool3d(2)
        self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)
        for i in range(5):
            for j in range(5 - i):
                if j == 0:
                    cin = in_channels if i == 0 else w[i - 1]
                else:
                    cin = w[i] * j + w[i + 1]
                setattr(self, f"conv{i}_{j}", VGGBlock(cin, w[i], w[i]))
        if deep_supervision:
            for k in range(1, 5):
                setattr(self, f"final{k}", nn.Conv3d(w[0], out_channels, 1))
        else:
            self.final = nn.Conv3d(w[0], out_channels, 1)

    def forward(self, x):
        X = {}
        for i in range(5):
            X[(i, 0)] = getattr(self, f"conv{i}_0")(x if i == 0 else self.pool(X[(i - 1, 0)]))
        for j in range(1, 5):
            for i in range(5 - j):
                same = [X[(i, k)] for k in range(j)]
                up = pad_to(self.up(X[(i + 1, j - 1)]), same[0])
                X[(i, j)] = getattr(self, f"conv{i}_{j}")(torch.cat(same + [up], dim=1))
        if self.deep_supervision:
            outs = torch.stack([getattr(self, f"final{k}")(X[(0, k)]) for k in range(1, 5)])
            return outs if self.training else outs.mean(dim=0)
        return self.final(X[(0, 4)])


MODELS = {"unet": UNet, "resunet": ResUNet, "attention_unet": AttentionUNet, "unetpp": UNetPlusPlus}
