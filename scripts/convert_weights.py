"""Converts torchvision or Detectron2 weights to an orbax checkpoint of our variables.

  python scripts/convert_weights.py --kind maskrcnn maskrcnn_resnet50_fpn_coco.pth out_dir
  python scripts/convert_weights.py --kind resnet resnet50-0676ba61.pth backbone_dir
  python scripts/convert_weights.py --kind detectron2 model_final_f10217.pkl out_dir

No PyTorch needed: .pth files (torch.save's zip and legacy formats, a state dict or a
training checkpoint holding one under 'model') and Detectron2's model-zoo .pkl files are
read by a restricted unpickler that refuses anything but arrays, dicts, lists, strings
and numbers, so a file cannot run code. A file of another kind than --kind says is an
error naming the --kind it needs. Evaluate Detectron2 weights with the matching
configs/detectron2/*.py.
"""

import argparse

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax import convert


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kind', choices=('maskrcnn', 'resnet', 'detectron2'),
                      default='maskrcnn',
                      help='maskrcnn: a torchvision maskrcnn_resnet50_fpn (or '
                           'keypointrcnn) state dict; resnet: an ImageNet classification '
                           'ResNet or ResNeXt (backbone only); detectron2: a Detectron2 '
                           'Mask R-CNN (.pkl or .pth)')
  parser.add_argument('source', help='the .pth (or Detectron2 .pkl) file')
  parser.add_argument('destination', help='new directory for the orbax checkpoint')
  parser.add_argument('--verbose', action='store_true',
                      help=f'print the full traceback of an error (or set {cli.VERBOSE_ENV}=1)')
  args = parser.parse_args()
  if args.kind == 'detectron2':
    checkpoint.save_variables(args.destination, convert.from_detectron2(args.source))
    print(f'wrote {args.destination}')
    return
  state_dict = convert.load_torch_state_dict(args.source)
  convert.check_kind(state_dict, args.kind, args.source)
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
