"""Channel dependency groups (DepGraph on ONNX): which tensor axes must be pruned together.

``model`` holds the data types (spaces, roles, groups, edits); ``base`` the analyzer's
state and primitives (spaces in one union-find, link, freeze); ``compute_ops`` and
``layout_ops`` the per-op handlers; ``analyzer`` the propagation from the weights and the
groups it yields (start at ``analyze_channels``); ``removal`` applies a chosen removal.
"""

from nnopt_graph.analysis.channels.analyzer import analyze_channels, find_channel_groups
from nnopt_graph.analysis.channels.model import (
    ROLE_BN_SCALE,
    ROLE_GROUPED,
    ROLE_IN,
    ROLE_OUT,
    ROLE_PARAM,
    WEIGHT_ROLES,
    ChannelAnalysis,
    ChannelEdit,
    ChannelGroup,
    ChannelRole,
    ChannelSpace,
    RemovalResult,
)
from nnopt_graph.analysis.channels.removal import apply_channel_removal, set_node_const_input

__all__ = [
    "ROLE_BN_SCALE",
    "ROLE_GROUPED",
    "ROLE_IN",
    "ROLE_OUT",
    "ROLE_PARAM",
    "WEIGHT_ROLES",
    "ChannelAnalysis",
    "ChannelEdit",
    "ChannelGroup",
    "ChannelRole",
    "ChannelSpace",
    "RemovalResult",
    "analyze_channels",
    "apply_channel_removal",
    "find_channel_groups",
    "set_node_const_input",
]
