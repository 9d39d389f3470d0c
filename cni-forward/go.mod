module trellis/cni-forward

go 1.22
