"""Foreign weights -> our variables: torchvision and Detectron2 checkpoints.

    variables = convert.from_torchvision(state_dict)       # maskrcnn / keypointrcnn
    variables = convert.from_detectron2('model_final.pkl')  # model-zoo .pkl or .pth
"""

from maskrcnn_jax.convert.detectron2_weights import from_detectron2
from maskrcnn_jax.convert.detectron2_weights import from_detectron2_resnet
from maskrcnn_jax.convert.kinds import check_kind
from maskrcnn_jax.convert.torchvision_weights import from_torchvision
from maskrcnn_jax.convert.torchvision_weights import from_torchvision_resnet
from maskrcnn_jax.convert.torchvision_weights import load_torch_state_dict

__all__ = ['check_kind', 'from_detectron2', 'from_detectron2_resnet', 'from_torchvision',
           'from_torchvision_resnet', 'load_torch_state_dict']
