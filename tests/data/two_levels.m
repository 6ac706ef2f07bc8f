function mpc = two_levels
%TWO_LEVELS  A 20 kV feeder behind a 110/20 kV supply, in per unit on 10 MVA
%   (CIGRE-MV-like: the HV/MV transformer as a series impedance at nominal ratio).
%   Each branch's per-unit impedance is on its own voltage level's base, so a
%   conversion to ohms must use the bus whose base the model uses (pandapower: from bus).

mpc.version = '2';
mpc.baseMVA = 10;

%% bus data
%	bus_i	type	Pd	Qd	Gs	Bs	area	Vm	Va	baseKV	zone	Vmax	Vmin
mpc.bus = [
	1	3	0	0	0	0	1	1.03	0	110	1	1.1	0.9;
	2	1	0	0	0	0	1	1	0	20	1	1.1	0.9;
	3	1	2.0	0.8	0	0	1	1	0	20	1	1.1	0.9;
	4	1	1.5	0.5	0	0	1	1	0	20	1	1.1	0.9;
];

%% generator data
%	bus	Pg	Qg	Qmax	Qmin	Vg	mBase	status	Pmax	Pmin
mpc.gen = [
	1	0	0	50	-50	1.03	10	1	50	0;
];

%% branch data
%	fbus	tbus	r	x	b	rateA	rateB	rateC	ratio	angle	status	angmin	angmax
mpc.branch = [
	1	2	0.0016	0.096	0	0	0	0	0	0	1	-360	360;
	2	3	0.0125	0.0177	0	0	0	0	0	0	1	-360	360;
	3	4	0.0250	0.0354	0	0	0	0	0	0	1	-360	360;
];
