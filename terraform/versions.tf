terraform {
  # Tested with 1.11; nothing here needs more than 1.6.
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.100 is the line this is tested with; 6.x changes nothing used here.
      version = ">= 5.100, < 7.0"
    }
  }
}
