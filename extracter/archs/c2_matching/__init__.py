"""C2-Matching (Jiang et al., ICCV 2021): the contrastive correspondence network, the correspondence generation and
the dynamic-aggregation restoration network, with the deformable convolutions through torchvision."""
