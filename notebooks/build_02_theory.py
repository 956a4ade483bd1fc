"""Writes notebooks/02_theory.ipynb (without outputs). Run from the repository root:

    python notebooks/build_02_theory.py

The notebook renders each answer from answers/ and runs its demonstration from cvlab.theory.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

INTRO = """# 02 理论问题解答（Theory answers）

讲义第四部分要求回答六个问题。每一节先显示 `answers/` 中的书面答案，再运行 `cvlab.theory` 中对应的演示（demonstration），
图保存到 `../figures/` 并显示在下方，表格中的数字全部由本次运行计算得到。

- `QUICK=True`：每个演示在 CPU 上几秒钟；`QUICK=False`：更多步数、更细的学习率网格，约几分钟。
- 需要图像的演示（批量噪声、残差网络、过拟合实验）使用 CIFAR-100 的类别均衡子集（大小见下方输出）；
  `SYNTHETIC=True` 时改用 cvlab 生成的合成数据，图上会标注 SYNTHETIC。
- 答案中引用的实测数字注明了各自的设置（QUICK 与数据）；设置不同，下方表格的数字也会不同。
- 所有演示固定随机种子、单线程运行，同一台机器、同一 torch 版本下结果可复现。"""

PARAMETERS = """QUICK = True                                # True: seconds per demo; False: thorough (minutes)
BASELINE_RUN_DIR = "../runs/01_baseline"    # the handout run written by notebook 01
DATA_ROOT = ""                              # empty: $CVLAB_DATA, else ../data, else ./data
DEVICE = "auto"                             # contract parameter; the demos here always run on the CPU
SYNTHETIC = False                           # True: generated CIFAR-format images instead of CIFAR-100
SEED = 0"""

SETUP = """import sys
from pathlib import Path

REPO = Path("..").resolve()                 # notebooks run with cwd = notebooks/
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import warnings

import pandas as pd
from IPython.display import Image, Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

from cvlab import theory

FIG_DIR = Path("../figures")
pd.set_option("display.precision", 4)


def answer(name: str) -> None:
    \"\"\"Render answers/<name>.md.\"\"\"
    display(Markdown((REPO / "answers" / f"{name}.md").read_text(encoding="utf-8")))


def figure(path) -> None:
    display(Image(filename=str(path)))


print(f"QUICK={QUICK}, SEED={SEED}; 演示在 CPU 上运行（DEVICE={DEVICE!r} 在本 notebook 中不起作用）")"""

DATA = """root = None if SYNTHETIC else theory.find_data_root(DATA_ROOT)
if not SYNTHETIC and root is None:
    raise FileNotFoundError(
        "没有找到 CIFAR-100：请设置 DATA_ROOT，或运行 `python -m cvlab data download --data-root data`"
        "（在仓库根目录），或设 SYNTHETIC=True 使用合成数据")
data = theory.load_demo_data(root or "", synthetic=SYNTHETIC, n_train=2000, n_test=1000)
print(data.description)"""

SECTIONS = [
    ("q1_batch_size", "## (1) 批量大小（batch size）",
     "**演示**：固定一个初始化状态的小型 CNN（无 BN，便于计算逐样本梯度），在训练图像上算出每个样本的梯度，"
     "再随机抽取不同大小的小批量，比较小批量梯度与全量梯度之间的平方误差和余弦相似度；右图是 50,000 张图像时每个 epoch 的步数。",
     """r1 = theory.batch_size_demo(FIG_DIR, data, quick=QUICK, seed=SEED)
figure(r1["figure"])
noise = r1["noise"].assign(measured_over_theory=lambda t: t.measured_sq_error / t.theory_sq_error)
display(noise)
display(r1["steps"])
print(f"{r1['n_examples']} 个样本，{r1['parameters']:,} 个参数；实测/理论 = "
      f"{noise.measured_over_theory.min():.3f} ~ {noise.measured_over_theory.max():.3f}；"
      f"噪声尺度 B_simple = tr(Σ)/|g|² = {r1['noise_scale_B_simple']:.0f}（初始化时，{r1['data']}）")"""),
    ("q2_epoch", "## (2) 迭代周期（epoch）",
     "**演示**：用 cvlab 自己的 `TensorLoader`（把图像编号当作标签）数出讲义设置下一个 epoch 的步数，"
     "并比较两个 epoch 中每张图像落在哪个批次：讲义不打乱（shuffle=False），打乱时则每个 epoch 的批次组合都不同。",
     """r2 = theory.epoch_demo(FIG_DIR, seed=SEED)
figure(r2["figure"])
display(pd.DataFrame({k: r2[k] for k in ("no_shuffle", "shuffle")}).T)
print(f"{r2['n_images']:,} 张图像、批量 {r2['batch_size']}：每个 epoch {r2['no_shuffle']['steps_per_epoch']} 步，"
      f"最后一批 {r2['no_shuffle']['last_batch']} 张；{r2['epochs']} 个 epoch 共 {r2['total_steps']:,} 步")
try:
    base = theory.run_gap(BASELINE_RUN_DIR)
    h = base["history"]
    print(f"基线运行 {BASELINE_RUN_DIR}{'（SYNTHETIC）' if base['synthetic'] else ''}：{base['epochs']} 个 epoch，"
          f"每个 epoch 平均 {h.epoch_seconds.mean():.1f} 秒，{h.images_per_second.mean():.0f} 张图像/秒")
except theory.RunDirError as exc:
    print(f"（没有基线运行，跳过每个 epoch 的耗时：{exc}）")"""),
    ("q3_overfitting", "## (3) 过拟合（overfitting）",
     "**演示 1**：从基线运行目录读出每个 epoch 的训练/测试损失，标出测试损失最低的 epoch。"
     "**演示 2**：同一个小型 CNN 只用很少的训练图像，分别不加正则化、加数据增广（随机裁剪 + 水平翻转）、加权重衰减，"
     "比较测试损失与训练损失之差（训练损失在未增广的训练图像上重新评估）。",
     """r3 = theory.overfitting_from_run(BASELINE_RUN_DIR, FIG_DIR)
if "missing" in r3:
    print(r3["missing"])
else:
    figure(r3["figure"])
    print(f"{r3['run']}{'（SYNTHETIC）' if r3['synthetic'] else ''}，{r3['n_train']} 张训练图像：测试损失在第 "
          f"{r3['min_test_loss_epoch']} 个 epoch 最低（{r3['min_test_loss']:.3f}），之后上升 {r3['test_loss_rise_after_min']:.3f}；"
          f"最终 训练/测试 损失 {r3['final_train_loss']:.3f}/{r3['final_test_loss']:.3f}，"
          f"准确率 {r3['final_train_acc']:.3f}/{r3['final_test_acc']:.3f}")""",
     """r3b = theory.regularization_demo(FIG_DIR, data, quick=QUICK, seed=SEED)
figure(r3b["figure"])
display(r3b["table"])
gaps = r3b["table"].set_index("setting").loss_gap
print(f"{r3b['n_train']} 张训练 / {r3b['n_test']} 张测试图像，{r3b['epochs']} 个 epoch（{r3b['data']}）："
      + "；".join(f"{k} 差距 {v:.2f}" for k, v in gaps.items()))"""),
    ("q4_resnet", "## (4) 残差块（residual block）为什么有效",
     "**演示**：32 层（2×15 个 3×3 卷积 + stem + 全连接）的普通网络与残差网络：左、中图是初始化时每个卷积层的权重梯度范数"
     "（有/无 BN）；右图是带 BN 的 8 层普通网络、32 层普通网络和 32 层残差网络用 Adam 训练的损失。",
     """r4 = theory.residual_demo(FIG_DIR, data, quick=QUICK, seed=SEED)
figure(r4["figure"])
display(r4["gradients"])
display(r4["training"])
print(r4["data"])"""),
    ("q5_activations", "## (5) 常用激活函数（activation functions）",
     "**演示**：用 autograd 求各激活函数的导数，灰色区域是 sigmoid / tanh 的饱和区（导数 < 0.01）；"
     "右图是 20 层全连接网络（He 初始化）中每层的权重梯度范数，只改变激活函数。",
     """r5 = theory.activation_demo(FIG_DIR, quick=QUICK, seed=SEED)
figure(r5["figure"])
display(r5["table"])
display(r5["gradient_ratio"].to_frame())"""),
    ("q6_optimizers", "## (6) 常用优化器（optimizers）",
     "**演示**：直接使用 `torch.optim` 中的七个优化器，在病态二次函数（条件数 100）、其旋转 30° 的版本和 Rosenbrock 函数上，"
     "每个优化器从同一个学习率网格中取（最后 10 步平均对数损失）最好的学习率，步数相同。",
     """r6 = theory.optimizer_demo(FIG_DIR, quick=QUICK)
figure(r6["figure"])
display(r6["table"].pivot(index="optimizer", columns="surface", values="final_loss"))
display(r6["table"].pivot(index="optimizer", columns="surface", values="best_lr"))
print("学习率网格：", ", ".join(f"{lr:.3g}" for lr in r6["lr_grid"]))"""),
]

CLOSING = """## 小结

- 批量大小决定每步梯度的噪声（方差约按 1/B 下降）和每个 epoch 的步数（讲义设置下的步数见第 (2) 节的输出）。
- 过拟合表现为训练损失继续下降而测试损失回升；数据增广、权重衰减等正则化手段缩小两者之差。
- 残差连接让梯度有一条不经过权重连乘的通路；带 BN 的深层普通网络即使梯度不消失也更难优化（退化问题）。
- 激活函数和初始化要配套；优化器的差别在病态问题上最明显，自适应方法的优势依赖于坐标轴方向。"""


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(INTRO), new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
             new_code_cell(SETUP), new_code_cell(DATA)]
    for name, title, demo_text, *codes in SECTIONS:
        cells += [new_markdown_cell(title), new_code_cell(f'answer("{name}")'), new_markdown_cell(demo_text)]
        cells += [new_code_cell(code) for code in codes]
    cells.append(new_markdown_cell(CLOSING))
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding without changes gives the same file
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    path = Path(__file__).with_name("02_theory.ipynb")
    nbformat.write(build(), path)
    print(f"wrote {path}")
