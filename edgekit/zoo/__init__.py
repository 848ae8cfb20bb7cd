"""Model definitions written in the project (torchvision does not import beside this torch build)."""
