# Where the execution role pulls AWS's PyTorch Deep Learning Containers from: job.image=aws trains
# on pytorch-training, endpoints and transform jobs serve on pytorch-inference (project/aws/image.py,
# project/aws/deploy.py). The registry account differs by region. The map is the SageMaker SDK's
# image tables (image_uri_config/pytorch.json, the versions the pins run on, PyTorch >= 2.1), as
# project/aws/image.py dlc_accounts() reads them; tests/test_iam.py fails, printing this block anew,
# when the installed SDK disagrees.

locals {
  dlc_accounts = {
    "af-south-1"      = "626614931356"
    "ap-east-1"       = "871362719292"
    "ap-east-2"       = "975050140332"
    "ap-northeast-1"  = "763104351884"
    "ap-northeast-2"  = "763104351884"
    "ap-northeast-3"  = "364406365360"
    "ap-south-1"      = "763104351884"
    "ap-south-2"      = "772153158452"
    "ap-southeast-1"  = "763104351884"
    "ap-southeast-2"  = "763104351884"
    "ap-southeast-3"  = "907027046896"
    "ap-southeast-4"  = "457447274322"
    "ap-southeast-5"  = "550225433462"
    "ap-southeast-6"  = "633930458069"
    "ap-southeast-7"  = "590183813437"
    "ca-central-1"    = "763104351884"
    "ca-west-1"       = "204538143572"
    "cn-north-1"      = "727897471807"
    "cn-northwest-1"  = "727897471807"
    "eu-central-1"    = "763104351884"
    "eu-central-2"    = "380420809688"
    "eu-isoe-west-1"  = "371248457586"
    "eu-north-1"      = "763104351884"
    "eu-south-1"      = "692866216735"
    "eu-south-2"      = "503227376785"
    "eu-west-1"       = "763104351884"
    "eu-west-2"       = "763104351884"
    "eu-west-3"       = "763104351884"
    "eusc-de-east-1"  = "204133271717"
    "il-central-1"    = "780543022126"
    "me-central-1"    = "914824155844"
    "me-south-1"      = "217643126080"
    "me-west-1"       = "124382933778"
    "mx-central-1"    = "637423239942"
    "sa-east-1"       = "763104351884"
    "us-east-1"       = "763104351884"
    "us-east-2"       = "763104351884"
    "us-gov-east-1"   = "446045086412"
    "us-gov-west-1"   = "442386744353"
    "us-iso-east-1"   = "886529160074"
    "us-isob-east-1"  = "094389454867"
    "us-isof-east-1"  = "303241398832"
    "us-isof-south-1" = "454834333376"
    "us-west-1"       = "763104351884"
    "us-west-2"       = "763104351884"
  }

  # Empty outside the map: the precondition on the role's policy then names the regions there are.
  dlc_account = lookup(local.dlc_accounts, var.region, "")
  # + "/pytorch-training" or "/pytorch-inference" (iam.tf).
  dlc_repository_prefix = "arn:${local.partition}:ecr:${var.region}:${local.dlc_account}:repository"
}
