// Precompiled header: the heavy, stable headers every translation unit pulls in.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <memory>
