"""The run report's parts that read engine manifests."""

from __future__ import annotations


def test_report_engine_rows_say_what_each_manifest_says():
    """The run report's Engines table: aoti's export + compile time and parity with eager, the precision OpenVINO
    runs, how int8 was quantized and planned."""
    from deployzoo.report import engine_rows

    rows = engine_rows([
        {"backend": "aoti", "precision": "fp16", "compile": {"export_seconds": 10.5, "compile_seconds": 31.25},
         "parity_vs_eager": {"boxes": 0.000123, "scores": 2e-06}},
        {"backend": "openvino", "precision": "int8", "build_seconds": 2.04,
         "openvino": {"inference_precision": "float32", "performance_hint": "LATENCY"},
         "quantization": {"method": "nncf.quantize (fast bias correction, mixed preset)", "float_groups": ["heads"]},
         "int8_plan": {"verdict": "int8 plan: float [heads], drop 0.00 <= 0.5, x1.40 fp32's speed"}},
        {"backend": "ort", "precision": "int8", "build_seconds": 1.0,
         "quantization": {"format": "QDQ", "int8_convs": 13, "total_convs": 27, "float_groups": []}},
        {"backend": "torch", "precision": "fp32"},
    ])
    assert rows == [
        ["aoti fp16", "41.8", "export 10.5 s + compile 31.25 s; max abs diff vs eager: boxes 0.00012, scores 2e-06"],
        ["openvino int8", "2.0", "float parts run float32 (LATENCY hint); int8: nncf.quantize (fast bias correction, "
                                 "mixed preset), float groups heads; planned: int8 plan: float [heads], drop 0.00 <= "
                                 "0.5, x1.40 fp32's speed"],
        ["ort int8", "1.0", "int8: QDQ, 13 of 27 convolutions int8"],
        ["torch fp32", "-", "-"],
    ]
