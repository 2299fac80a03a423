"""Fine-tune a tiny transformer language model with HuggingFace's Adafactor, from this library.

The model is a randomly initialised two-layer causal transformer built with ``torch.nn``
(nothing is downloaded); the text is generated: sentences of a toy language whose next token
follows a fixed, random, sparse transition table, so the achievable loss is known (the entropy
of the table). The optimizer and its schedule are the ones of ``transformers.optimization``,
imported from ``functional_optim.compat.transformers`` instead: Adafactor with its relative
step size (``lr=None``), and ``AdafactorSchedule`` reporting the step size it used. The script
prints the losses and saves the loss and step-size curves to a PNG.

    python examples/finetune_adafactor.py [--steps 300] [--out examples/out]
"""

import argparse
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

# was: from transformers.optimization import Adafactor, AdafactorSchedule
from functional_optim.compat.transformers import Adafactor, AdafactorSchedule  # noqa: E402

VOCAB, SUCCESSORS, SEQ, BATCH, WIDTH = 24, 2, 32, 32, 48

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=300, help="optimizer steps")
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "out")
args = p.parse_args()

torch.set_num_threads(1)  # a model this small runs fastest on one thread
torch.manual_seed(0)

# --- the toy language: each token has SUCCESSORS equally likely next tokens -----------------
table = torch.stack([torch.randperm(VOCAB)[:SUCCESSORS] for _ in range(VOCAB)])
floor = math.log(SUCCESSORS)  # the loss of a model that learned the table


def sentences(n: int) -> torch.Tensor:
    tokens = [torch.randint(VOCAB, (n,))]
    for _ in range(SEQ):
        choice = torch.randint(SUCCESSORS, (n,))
        tokens.append(table[tokens[-1], choice])
    return torch.stack(tokens, dim=1)


class TinyLM(torch.nn.Module):
    """Token and position embeddings, two causal transformer layers, a tied output head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        torch.nn.init.normal_(self.embed.weight, std=0.02)  # (a tied head: small logits)
        self.position = torch.nn.Parameter(torch.randn(SEQ, WIDTH) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(WIDTH, nhead=4, dim_feedforward=2 * WIDTH,
                                                 dropout=0.0, batch_first=True)
        self.layers = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(SEQ))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        h = self.layers(h, mask=self.mask, is_causal=True)
        return self.norm(h) @ self.embed.weight.T


model = TinyLM()
optimizer = Adafactor(model.parameters(), lr=None, scale_parameter=True, relative_step=True,
                      warmup_init=False)
lr_scheduler = AdafactorSchedule(optimizer)
held_out = sentences(256)


def loss_of(batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                             batch[:, 1:].reshape(-1))


losses, step_sizes = [], []
with tqdm(range(args.steps), desc="adafactor") as bar:
    for _ in bar:
        loss = loss_of(sentences(BATCH))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        losses.append(loss.item())
        step_sizes.append(float(lr_scheduler.get_last_lr()[0]))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{step_sizes[-1]:.2e}")

with torch.no_grad():
    final = loss_of(held_out).item()
print(f"initial loss {losses[0]:.3f} (uniform: {math.log(VOCAB):.3f}); final loss {final:.3f} "
      f"on held-out text (the table's entropy: {floor:.3f})")
print(f"Adafactor's step size (AdafactorSchedule): {step_sizes[0]:.2e} at step 1, "
      f"{step_sizes[-1]:.2e} at step {args.steps}")

args.out.mkdir(parents=True, exist_ok=True)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.plot(losses, label="training loss")
ax1.axhline(floor, color="gray", linestyle="--", label="entropy of the language")
ax1.set_xlabel("step")
ax1.set_ylabel("cross-entropy")
ax1.legend()
ax2.plot(range(1, len(step_sizes) + 1), step_sizes)
ax2.set_xlabel("step")
ax2.set_ylabel("step size (AdafactorSchedule)")
ax2.set_yscale("log")
fig.suptitle("A tiny transformer fine-tuned with compat.transformers.Adafactor")
fig.tight_layout()
path = args.out / "finetune_adafactor.png"
fig.savefig(path, dpi=120)
print(f"saved {path}")
