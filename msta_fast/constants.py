"""Pixel statistics of the models' inputs, shared by the data pipeline and the models (0..1 pixels)."""

# ViCLIP's input normalisation: ImageNet statistics (not CLIP's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What open_clip's OpenAI CLIP weights expect, for the frame-wise CLIP baseline.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
