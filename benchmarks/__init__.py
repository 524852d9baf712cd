"""Benchmarks, outside the installed package; run through scripts/benchmark.py (main.py).

One timer (timing.py) and one Markdown table writer (tables.py) serve every benchmark:
model_step.py (train step, inference), torchvision_compare.py (the same in torchvision),
real_data.py (a COCO folder's padding and real train steps), input_pipeline.py,
evaluation.py (host post-processing, COCOeval), serving.py (export paths) and nms.py.
"""
