function mpc = case3_code
%CASE3_CODE  Three buses whose impedances are scaled by a function call after the
%   matrices: code the loader does not evaluate, so it must refuse the file naming
%   the line (the fix is MATPOWER's savecase).

mpc.version = '2';
mpc.baseMVA = 10;

%% bus data
%	bus_i	type	Pd	Qd	Gs	Bs	area	Vm	Va	baseKV	zone	Vmax	Vmin
mpc.bus = [
	1	3	0	0	0	0	1	1	0	12.66	1	1.1	0.9;
	2	1	0.1	0.06	0	0	1	1	0	12.66	1	1.1	0.9;
	3	1	0.09	0.04	0	0	1	1	0	12.66	1	1.1	0.9;
];

%% generator data
%	bus	Pg	Qg	Qmax	Qmin	Vg	mBase	status	Pmax	Pmin
mpc.gen = [
	1	0	0	10	-10	1	10	1	10	0;
];

%% branch data
%	fbus	tbus	r	x	b	rateA	rateB	rateC	ratio	angle	status	angmin	angmax
mpc.branch = [
	1	2	0.0922	0.0470	0	0	0	0	0	0	1	-360	360;
	2	3	0.4930	0.2511	0	0	0	0	0	0	1	-360	360;
];

%% scale the impedances with a helper of the lab's own
mpc.branch(:, 3:4) = scale_impedance(mpc.branch(:, 3:4), 12.66);
