"""What sharding your own image folder costs: seconds and bytes for N photo-sized JPEGs.

Writes N synthetic JPEG images (smooth gradients with a few shapes, photo-like sizes and file sizes) into
an ImageFolder tree of two classes, then times `gan-dist prepare-data --dataset folder` on it (decode,
convert to --channels x --image-size, PNG-encode, write shards, verify) and prints the folder's and the
shards' sizes.

    python scripts/folder_shard_cost.py --num 10000 --width 640 --height 480 --image-size 32 --work /tmp/folder_cost
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_images(root: Path, num: int, width: int, height: int, seed: int = 0) -> int:
    """num JPEGs under root/{circles,squares}/; returns their total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    y, x = np.mgrid[0:height, 0:width]
    for index in range(num):
        label = "circles" if index % 2 == 0 else "squares"
        (root / label).mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([(a * x / width + b * y / height) % 1.0, (c * x / width) % 1.0,
                         (b * y / height) % 1.0], axis=-1)  # (H, W, 3) in [0, 1]
        image = Image.fromarray((base * 255).astype(np.uint8), mode="RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(0.05, 0.2) * height
            box = (cx - r, cy - r, cx + r, cy + r)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if label == "circles" else draw.rectangle)(box, fill=fill)
        path = root / label / f"{index:06d}.jpg"
        image.save(path, quality=90)
        total += path.stat().st_size
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10000)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (images and shards)")
    args = parser.parse_args()
    images, shards = args.work / "images", args.work / "shards"
    start = time.perf_counter()
    image_bytes = write_images(images, args.num, args.width, args.height)
    print(f"wrote {args.num} JPEGs ({args.width}x{args.height}, {image_bytes / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    command = ["gan-dist", "prepare-data", "--dataset", "folder", "--source", f"folder:{images}",
               "--image-size", str(args.image_size), "--channels", str(args.channels), "--out", str(shards)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    shard_bytes = sum(path.stat().st_size for path in shards.rglob("*.tar"))
    result = {"images": args.num, "source": f"{args.width}x{args.height} JPEG", "image_bytes": image_bytes,
              "to": f"{args.channels}x{args.image_size}x{args.image_size}", "prepare_data_s": round(seconds, 1),
              "images_per_s": round(args.num / seconds), "shard_bytes": shard_bytes,
              "shard_bytes_per_image": round(shard_bytes / args.num)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
