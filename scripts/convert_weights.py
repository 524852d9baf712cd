"""Converts torchvision weights (.pth) to an orbax checkpoint of our variables.

  python scripts/convert_weights.py --kind maskrcnn maskrcnn_resnet50_fpn_coco.pth out_dir
  python scripts/convert_weights.py --kind resnet resnet50-0676ba61.pth backbone_dir

Needs torch to read the .pth file (read with weights_only=True, so it cannot run code).
"""

import argparse

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax import convert


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kind', choices=('maskrcnn', 'resnet'), default='maskrcnn',
                      help='maskrcnn: a maskrcnn_resnet50_fpn state dict; '
                           'resnet: an ImageNet classification ResNet (backbone only)')
  parser.add_argument('source', help='the .pth file')
  parser.add_argument('destination', help='new directory for the orbax checkpoint')
  parser.add_argument('--verbose', action='store_true',
                      help=f'print the full traceback of an error (or set {cli.VERBOSE_ENV}=1)')
  args = parser.parse_args()
  state_dict = convert.load_torch_state_dict(args.source)
  if args.kind == 'maskrcnn':
    variables = convert.from_torchvision(state_dict)
  else:
    # Under 'backbone', as in the full model, so training can start from it.
    variables = {collection: {'backbone': tree}
                 for collection, tree in convert.from_torchvision_resnet(state_dict).items()}
  checkpoint.save_variables(args.destination, variables)
  print(f'wrote {args.destination}')


if __name__ == '__main__':
  try:
    main()
  except Exception as error:  # pylint: disable=broad-except
    cli.exit_with_error(error, 1)
