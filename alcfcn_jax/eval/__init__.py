"""Evaluation: pooled IoU / count / GAME metrics, the sharded evaluation pass, reports, overlays."""
